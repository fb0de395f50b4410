#!lua name=mailboxd
-- The mailboxd function library: every change to shared mailboxes and
-- groups is one of these functions, so each is atomic in Redis and costs
-- one round trip. mailboxd loads it with FUNCTION LOAD REPLACE on every
-- connection. Times come from Redis's own clock (TIME), so instances'
-- clocks never matter. Ids are strings of decimal digits on the wire
-- (Lua would print large numbers in exponent form); as Lua numbers they
-- are exact (below 2^53).
--
-- A message sent to a mailbox is kept in the mailbox's list. A message
-- published to a group is kept once, in the group's log, with the id block
-- it took: each member has a slot in the group (given at JOIN), and its id
-- for that message is the block's first id plus its slot. A mailbox's
-- messages are its own list merged with the logs of its groups (entries
-- after it joined, and not excepting it), read when it is opened; on LEAVE
-- the group's entries it had are copied into its own list. So a PUBLISH
-- costs the same whatever the group's size.
--
-- Keys (P = 'mbx:'):
--   P..'id'          last message id issued (seeded from TIME in µs)
--   P..'disc'        highest id discarded with a removed mailbox
--   P..'nm', P..'ng' mailboxes and groups in existence
--   P..'st'          hash of totals: r retained entries, rb their bytes,
--                    n messages, e evicted entries, x expired mailboxes
--   P..'m:'..name    hash of a mailbox: h horizon, b bytes of its list
--   P..'q:'..name    list of its own retained messages: '<id> <event>\n<data>'
--   P..'mg:'..name   set of its groups
--   P..'w:'..name    hash: instance -> its subscribers on the mailbox
--   P..'g:'..group   hash: member -> '<slot> <joined-after-id>'
--   P..'gm:'..group  hash: n slots ever given, h log horizon, b log bytes
--   P..'gf:'..group  list of free slots
--   P..'gl:'..group  list: '<first> <event> <excepted,...|->\n<data>'
--   P..'gi:'..group  hash: instance -> members it watches
--   P..'gc:'..group  hash: instance -> subscribers on those members
--   P..'idle'        zset: unwatched mailbox -> ms since when
--   P..'inst'        zset: instance -> ms of its last heartbeat
--   P..'iw:'..inst   set of the mailboxes an instance watches
--   P..'c:'..inst    the instance's pub/sub channel (not a key)
--   P..'epoch'       set once; a new value means Redis lost its data
--
-- Notifications on an instance's channel:
--   'D <n> <event>\n' + n x '<id> <mailbox>\n' + data   a SEND
--   'G <group> <first> <event> <excepted|->\n' + data    a PUBLISH
--   'J <group> <mailbox> <slot> <joined-after-id>'        a watched mailbox joined
--   'L <group> <mailbox>'                                 ... left
--   'X <mailbox>'                                         dropped

local P = 'mbx:'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(id)
  return string.format('%d', id)
end

-- Allocates n consecutive ids; returns the first, as a number.
local function take_ids(n)
  if redis.call('EXISTS', P .. 'id') == 0 then
    local t = redis.call('TIME')
    redis.call('SET', P .. 'id', t[1] .. string.format('%06d', tonumber(t[2])))
  end
  return redis.call('INCRBY', P .. 'id', n) - n + 1
end

local function last_issued()
  return redis.call('GET', P .. 'id') or '0'
end

local function totals()
  return { r = 0, rb = 0, n = 0, e = 0, x = 0 }
end

-- (Never HINCRBY by 0: Lua would send '-0', which Redis refuses.)
local function add_totals(acc)
  local st = P .. 'st'
  for _, k in ipairs({ 'r', 'rb', 'n', 'e', 'x' }) do
    if acc[k] ~= 0 then redis.call('HINCRBY', st, k, acc[k]) end
  end
end

local function id_of(entry)
  return tonumber(string.match(entry, '^%d+'))
end

-- Trims a list from the front to `retain` entries and `retain_bytes`
-- (keeping at least the newest); records the newest evicted id as the
-- horizon in `meta`.
local function trim(list, meta, len, bytes, retain, retain_bytes, acc)
  while len > retain or (bytes > retain_bytes and len > 1) do
    local old = redis.call('LPOP', list)
    redis.call('HSET', meta, 'h', string.match(old, '^%d+'))
    bytes = redis.call('HINCRBY', meta, 'b', 0 - #old)
    len = len - 1
    acc.r = acc.r - 1
    acc.rb = acc.rb - #old
    acc.e = acc.e + 1
  end
end

-- Creates a mailbox unless it exists; false when `limit` mailboxes exist.
local function ensure(name, ms, limit)
  local m = P .. 'm:' .. name
  if redis.call('EXISTS', m) == 1 then
    return true
  end
  if tonumber(redis.call('GET', P .. 'nm') or '0') >= limit then
    return false
  end
  redis.call('INCR', P .. 'nm')
  redis.call('HSET', m, 'h', redis.call('GET', P .. 'disc') or '0', 'b', 0)
  redis.call('ZADD', P .. 'idle', ms, name)
  return true
end

-- Adds to an instance's share of a group's watched members and subscribers.
local function group_watch(group, inst, dm, dc)
  if dm ~= 0 and redis.call('HINCRBY', P .. 'gi:' .. group, inst, dm) <= 0 then
    redis.call('HDEL', P .. 'gi:' .. group, inst)
  end
  if dc ~= 0 and redis.call('HINCRBY', P .. 'gc:' .. group, inst, dc) <= 0 then
    redis.call('HDEL', P .. 'gc:' .. group, inst)
  end
end

-- Sets (a number) or clears (nil) an instance's subscriber count on a
-- mailbox, keeping its groups' shares in step.
local function set_watch(name, inst, new)
  local w = P .. 'w:' .. name
  -- (A missing field comes back as false, not nil.)
  local old = redis.call('HGET', w, inst)
  if old then old = tonumber(old) else old = nil end
  if new == nil then
    if old == nil then return end
    redis.call('HDEL', w, inst)
    redis.call('SREM', P .. 'iw:' .. inst, name)
  else
    if old == new then return end
    redis.call('HSET', w, inst, new)
    redis.call('SADD', P .. 'iw:' .. inst, name)
  end
  local dm = (new ~= nil and 1 or 0) - (old ~= nil and 1 or 0)
  local dc = (new or 0) - (old or 0)
  if dm ~= 0 or dc ~= 0 then
    for _, group in ipairs(redis.call('SMEMBERS', P .. 'mg:' .. name)) do
      group_watch(group, inst, dm, dc)
    end
  end
end

-- Publishes to every instance watching the mailbox.
local function tell_watchers(name, text)
  for _, inst in ipairs(redis.call('HKEYS', P .. 'w:' .. name)) do
    redis.call('PUBLISH', P .. 'c:' .. inst, text)
  end
end

-- A group log entry's parts: first id, event, excepted list, data.
local function parse_log(e)
  return string.match(e, '^(%d+) (%S*) (%S+)\n(.*)$')
end

local function excepts(list, name)
  return list ~= '-' and string.find(',' .. list .. ',', ',' .. name .. ',', 1, true) ~= nil
end

-- A mailbox's messages: its own list merged with its groups' logs, the
-- newest `retain` (and `retain_bytes`), each as '<id> <event>\n<data>'
-- with its id; and its horizon (below which something it got may be gone).
-- Returns horizon, entries (oldest first), and its groups as a flat list
-- group, slot, joined-after. With `only`, the logs of that group alone.
local function view(name, retain, retain_bytes, only)
  local horizon = tonumber(redis.call('HGET', P .. 'm:' .. name, 'h') or '0')
  local all = {}
  for _, e in ipairs(redis.call('LRANGE', P .. 'q:' .. name, 0, -1)) do
    all[#all + 1] = { id_of(e), e }
  end
  local groups = {}
  for _, group in ipairs(redis.call('SMEMBERS', P .. 'mg:' .. name)) do
    local mine = (only == nil or only == group) and redis.call('HGET', P .. 'g:' .. group, name)
    if mine then
      local slot, after = string.match(mine, '^(%d+) (%d+)$')
      groups[#groups + 1] = group
      groups[#groups + 1] = slot
      groups[#groups + 1] = after
      slot, after = tonumber(slot), tonumber(after)
      local gh = tonumber(redis.call('HGET', P .. 'gm:' .. group, 'h') or '0')
      if gh > after and gh + slot > horizon then
        horizon = gh + slot
      end
      for _, e in ipairs(redis.call('LRANGE', P .. 'gl:' .. group, 0, -1)) do
        local first, event, ex, data = parse_log(e)
        first = tonumber(first)
        if first and first > after and not excepts(ex, name) then
          local id = first + slot
          all[#all + 1] = { id, fmt(id) .. ' ' .. event .. '\n' .. data }
        end
      end
    end
  end
  table.sort(all, function(x, y) return x[1] < y[1] end)
  local keep, bytes = 0, 0
  for i = #all, 1, -1 do
    if keep >= retain or (keep > 0 and bytes + #all[i][2] > retain_bytes) then
      break
    end
    keep = keep + 1
    bytes = bytes + #all[i][2]
  end
  local out = {}
  local dropped = #all - keep
  if dropped > 0 and all[dropped][1] > horizon then
    horizon = all[dropped][1]
  end
  for i = dropped + 1, #all do
    out[#out + 1] = all[i][2]
  end
  return horizon, out, groups
end

local function last_of(horizon, entries)
  if #entries > 0 then
    return string.match(entries[#entries], '^%d+')
  end
  return fmt(horizon)
end

-- Takes a member out of a group. With `keep`, the group's messages it had
-- are copied into its own list first (it keeps what it was sent).
local function leave_group(name, group, keep, retain, retain_bytes, acc)
  local g = P .. 'g:' .. group
  local mine = redis.call('HGET', g, name)
  if not mine then
    return
  end
  local slot, after = string.match(mine, '^(%d+) (%d+)$')
  if keep then
    local horizon, entries = view(name, retain, retain_bytes, group)
    local q, m = P .. 'q:' .. name, P .. 'm:' .. name
    local old_len, old_bytes = redis.call('LLEN', q), tonumber(redis.call('HGET', m, 'b') or '0')
    redis.call('DEL', q)
    local bytes = 0
    for _, e in ipairs(entries) do
      redis.call('RPUSH', q, e)
      bytes = bytes + #e
    end
    redis.call('HSET', m, 'h', fmt(horizon), 'b', bytes)
    acc.r = acc.r + #entries - old_len
    acc.rb = acc.rb + bytes - old_bytes
  end
  redis.call('HDEL', g, name)
  redis.call('SREM', P .. 'mg:' .. name, group)
  redis.call('LPUSH', P .. 'gf:' .. group, slot)
  local w = redis.call('HGETALL', P .. 'w:' .. name)
  for i = 1, #w, 2 do
    group_watch(group, w[i], -1, 0 - tonumber(w[i + 1]))
    redis.call('PUBLISH', P .. 'c:' .. w[i], 'L ' .. group .. ' ' .. name)
  end
  if redis.call('HLEN', g) == 0 then
    local gl = P .. 'gl:' .. group
    local gm = P .. 'gm:' .. group
    local n = redis.call('LLEN', gl)
    if n > 0 then acc.r = acc.r - n end
    local b = tonumber(redis.call('HGET', gm, 'b') or '0')
    if b > 0 then acc.rb = acc.rb - b end
    redis.call('DEL', g, gm, P .. 'gf:' .. group, gl, P .. 'gi:' .. group, P .. 'gc:' .. group)
    redis.call('DECR', P .. 'ng')
  end
end

-- Removes a mailbox and its memberships; returns its watching instances.
local function remove(name, acc)
  local m = P .. 'm:' .. name
  if redis.call('EXISTS', m) == 0 then
    return {}
  end
  local horizon, entries = view(name, math.huge, math.huge)
  local last = tonumber(last_of(horizon, entries))
  for _, group in ipairs(redis.call('SMEMBERS', P .. 'mg:' .. name)) do
    leave_group(name, group, false, 0, 0, acc)
  end
  local q = P .. 'q:' .. name
  local n = redis.call('LLEN', q)
  if n > 0 then acc.r = acc.r - n end
  local b = tonumber(redis.call('HGET', m, 'b') or '0')
  if b > 0 then acc.rb = acc.rb - b end
  local watchers = redis.call('HKEYS', P .. 'w:' .. name)
  for _, inst in ipairs(watchers) do
    redis.call('SREM', P .. 'iw:' .. inst, name)
  end
  if last > tonumber(redis.call('GET', P .. 'disc') or '0') then
    redis.call('SET', P .. 'disc', fmt(last))
  end
  redis.call('DEL', m, q, P .. 'mg:' .. name, P .. 'w:' .. name)
  redis.call('ZREM', P .. 'idle', name)
  redis.call('DECR', P .. 'nm')
  return watchers
end

-- No instance watches it any more: it goes at once if it holds nothing,
-- else its expiry clock starts.
local function unwatched(name, ms, acc)
  local m = P .. 'm:' .. name
  if redis.call('EXISTS', m) == 0 or redis.call('EXISTS', P .. 'w:' .. name) == 1 then
    return
  end
  if redis.call('LLEN', P .. 'q:' .. name) == 0 and redis.call('EXISTS', P .. 'mg:' .. name) == 0 then
    remove(name, acc)
  else
    redis.call('ZADD', P .. 'idle', ms, name)
  end
end

-- mbx_send: name event data retain retain_bytes max_mailboxes -> {id, live}
redis.register_function('mbx_send', function(_, a)
  local name, event, data = a[1], a[2], a[3]
  if not ensure(name, now_ms(), tonumber(a[6])) then
    return redis.error_reply('FULL mailboxes')
  end
  local id = fmt(take_ids(1))
  local entry = id .. ' ' .. event .. '\n' .. data
  local q, m = P .. 'q:' .. name, P .. 'm:' .. name
  local acc = totals()
  acc.n, acc.r, acc.rb = 1, 1, #entry
  local len = redis.call('RPUSH', q, entry)
  local bytes = redis.call('HINCRBY', m, 'b', #entry)
  trim(q, m, len, bytes, tonumber(a[4]), tonumber(a[5]), acc)
  local live = 0
  local w = redis.call('HGETALL', P .. 'w:' .. name)
  local note = 'D 1 ' .. event .. '\n' .. id .. ' ' .. name .. '\n' .. data
  for i = 1, #w, 2 do
    redis.call('PUBLISH', P .. 'c:' .. w[i], note)
    live = live + tonumber(w[i + 1])
  end
  add_totals(acc)
  return { id, live }
end)

-- mbx_publish: group event data retain retain_bytes except... -> {reached, live}
redis.register_function('mbx_publish', function(_, a)
  local group, event, data = a[1], a[2], a[3]
  local g = P .. 'g:' .. group
  local members = redis.call('HLEN', g)
  if members == 0 then
    return { 0, 0 }
  end
  local excepted, seen, skip = {}, {}, 0
  for i = 6, #a do
    if not seen[a[i]] then
      seen[a[i]] = true
      if redis.call('HEXISTS', g, a[i]) == 1 then
        excepted[#excepted + 1] = a[i]
        for _, n in ipairs(redis.call('HVALS', P .. 'w:' .. a[i])) do
          skip = skip + tonumber(n)
        end
      end
    end
  end
  if #excepted == members then
    return { 0, 0 }
  end
  local gm, gl = P .. 'gm:' .. group, P .. 'gl:' .. group
  local first = fmt(take_ids(tonumber(redis.call('HGET', gm, 'n'))))
  local ex = '-'
  if #excepted > 0 then ex = table.concat(excepted, ',') end
  local head = first .. ' ' .. event .. ' ' .. ex
  local entry = head .. '\n' .. data
  local acc = totals()
  acc.n, acc.r, acc.rb = members - #excepted, 1, #entry
  local len = redis.call('RPUSH', gl, entry)
  local bytes = redis.call('HINCRBY', gm, 'b', #entry)
  trim(gl, gm, len, bytes, tonumber(a[4]), tonumber(a[5]), acc)
  local note = 'G ' .. group .. ' ' .. entry
  for _, inst in ipairs(redis.call('HKEYS', P .. 'gi:' .. group)) do
    redis.call('PUBLISH', P .. 'c:' .. inst, note)
  end
  local live = 0 - skip
  for _, n in ipairs(redis.call('HVALS', P .. 'gc:' .. group)) do
    live = live + tonumber(n)
  end
  add_totals(acc)
  return { members - #excepted, math.max(live, 0) }
end)

-- mbx_open: name inst client_limit retain retain_bytes ->
-- {horizon, last, {entries}, {group, slot, after, ...}}. The instance is
-- registered as watching it in the same step, so nothing stored after
-- this is missed.
redis.register_function('mbx_open', function(_, a)
  local name, inst = a[1], a[2]
  if not ensure(name, now_ms(), tonumber(a[3])) then
    return redis.error_reply('FULL mailboxes')
  end
  if redis.call('HEXISTS', P .. 'w:' .. name, inst) == 0 then
    set_watch(name, inst, 0)
  end
  redis.call('ZREM', P .. 'idle', name)
  local horizon, entries, groups = view(name, tonumber(a[4]), tonumber(a[5]))
  return { fmt(horizon), last_of(horizon, entries), entries, groups }
end)

-- mbx_watch: inst (name count keep)... Reports this instance's
-- subscriber counts; keep=0: it lost all interest in the mailbox.
redis.register_function('mbx_watch', function(_, a)
  local inst = a[1]
  local ms = now_ms()
  local acc = totals()
  for i = 2, #a, 3 do
    local name, count, keep = a[i], tonumber(a[i + 1]), a[i + 2]
    if keep == '1' then
      if redis.call('EXISTS', P .. 'm:' .. name) == 1 then
        set_watch(name, inst, count)
        redis.call('ZREM', P .. 'idle', name)
      end
    else
      set_watch(name, inst, nil)
      unwatched(name, ms, acc)
    end
  end
  add_totals(acc)
  return #a
end)

-- mbx_reset: inst. After a reconnection: forgets every registration of
-- the instance (mbx_resync makes the ones still true again). Nothing is
-- removed here, even a mailbox that holds nothing: it only starts to idle.
redis.register_function('mbx_reset', function(_, a)
  local inst = a[1]
  local ms = now_ms()
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'iw:' .. inst)) do
    set_watch(name, inst, nil)
    if redis.call('EXISTS', P .. 'w:' .. name) == 0 and redis.call('EXISTS', P .. 'm:' .. name) == 1 then
      redis.call('ZADD', P .. 'idle', ms, name)
    end
  end
  redis.call('DEL', P .. 'iw:' .. inst)
  return 1
end)

-- mbx_resync: inst retain retain_bytes (name count)... After a
-- reconnection: registers the instance again and returns, per mailbox,
-- {0} if it is gone, else {1, horizon, {entries}, {groups}} to re-feed its
-- subscribers from.
redis.register_function('mbx_resync', function(_, a)
  local inst, retain, retain_bytes = a[1], tonumber(a[2]), tonumber(a[3])
  local out = {}
  for i = 4, #a, 2 do
    local name, count = a[i], tonumber(a[i + 1])
    if redis.call('EXISTS', P .. 'm:' .. name) == 0 then
      out[#out + 1] = { 0 }
    else
      set_watch(name, inst, count)
      redis.call('ZREM', P .. 'idle', name)
      local horizon, entries, groups = view(name, retain, retain_bytes)
      out[#out + 1] = { 1, fmt(horizon), entries, groups }
    end
  end
  return out
end)

-- mbx_join: group max_mailboxes max_groups names... -> size
redis.register_function('mbx_join', function(_, a)
  local group = a[1]
  local g = P .. 'g:' .. group
  local missing = 0
  for i = 4, #a do
    if redis.call('EXISTS', P .. 'm:' .. a[i]) == 0 then
      missing = missing + 1
    end
  end
  if tonumber(redis.call('GET', P .. 'nm') or '0') + missing > tonumber(a[2]) then
    return redis.error_reply('FULL mailboxes')
  end
  if redis.call('EXISTS', g) == 0 and #a >= 4 then
    if tonumber(redis.call('GET', P .. 'ng') or '0') >= tonumber(a[3]) then
      return redis.error_reply('FULL groups')
    end
    redis.call('INCR', P .. 'ng')
    redis.call('HSET', P .. 'gm:' .. group, 'n', 0, 'h', 0, 'b', 0)
  end
  local ms = now_ms()
  local after = last_issued()
  for i = 4, #a do
    local name = a[i]
    ensure(name, ms, math.huge)
    if redis.call('HEXISTS', g, name) == 0 then
      local slot = redis.call('RPOP', P .. 'gf:' .. group)
      if not slot then
        slot = fmt(redis.call('HINCRBY', P .. 'gm:' .. group, 'n', 1) - 1)
      end
      redis.call('HSET', g, name, slot .. ' ' .. after)
      redis.call('SADD', P .. 'mg:' .. name, group)
      local w = redis.call('HGETALL', P .. 'w:' .. name)
      for j = 1, #w, 2 do
        group_watch(group, w[j], 1, tonumber(w[j + 1]))
        redis.call('PUBLISH', P .. 'c:' .. w[j], 'J ' .. group .. ' ' .. name .. ' ' .. slot .. ' ' .. after)
      end
    end
  end
  return redis.call('HLEN', g)
end)

-- mbx_leave: group retain retain_bytes names... -> size
redis.register_function('mbx_leave', function(_, a)
  local group = a[1]
  local acc = totals()
  for i = 4, #a do
    leave_group(a[i], group, true, tonumber(a[2]), tonumber(a[3]), acc)
  end
  add_totals(acc)
  return redis.call('HLEN', P .. 'g:' .. group)
end)

-- mbx_members: group -> names
redis.register_function('mbx_members', function(_, a)
  return redis.call('HKEYS', P .. 'g:' .. a[1])
end)

-- mbx_drop: name -> 1, or 0 if there is no such mailbox. Every instance
-- watching it is told to end its streams.
redis.register_function('mbx_drop', function(_, a)
  local name = a[1]
  if redis.call('EXISTS', P .. 'm:' .. name) == 0 then
    return 0
  end
  local acc = totals()
  for _, inst in ipairs(remove(name, acc)) do
    redis.call('PUBLISH', P .. 'c:' .. inst, 'X ' .. name)
  end
  add_totals(acc)
  return 1
end)

-- mbx_info: name retain retain_bytes -> {retained, last, groups, idle_ms,
-- subscribers} or nil
redis.register_function('mbx_info', function(_, a)
  local name = a[1]
  if redis.call('EXISTS', P .. 'm:' .. name) == 0 then
    return nil
  end
  local horizon, entries = view(name, tonumber(a[2]), tonumber(a[3]))
  local since = redis.call('ZSCORE', P .. 'idle', name)
  local idle = 0
  if since then
    idle = now_ms() - tonumber(since)
  end
  local subscribers = 0
  for _, n in ipairs(redis.call('HVALS', P .. 'w:' .. name)) do
    subscribers = subscribers + tonumber(n)
  end
  return { #entries, last_of(horizon, entries), redis.call('SCARD', P .. 'mg:' .. name), idle, subscribers }
end)

-- mbx_tick: inst ttl_ms dead_ms epoch -> {registered, epoch, expired,
-- mailboxes, groups, retained, retained_bytes, messages, evicted, expired_total}
-- The heartbeat, every second from every instance: records this
-- instance alive, forgets instances silent for dead_ms (their mailboxes
-- start to idle), and expires mailboxes unwatched for ttl_ms. A sweep
-- rather than key expiry, because an expiring mailbox must also leave its
-- groups, and a watched one must never expire.
redis.register_function('mbx_tick', function(_, a)
  local inst, ttl, dead = a[1], tonumber(a[2]), tonumber(a[3])
  local ms = now_ms()
  redis.call('SETNX', P .. 'epoch', a[4])
  local registered = redis.call('ZSCORE', P .. 'inst', inst) ~= false
  redis.call('ZADD', P .. 'inst', ms, inst)
  local acc = totals()
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', P .. 'inst', '-inf', ms - dead, 'LIMIT', 0, 16)) do
    for _, name in ipairs(redis.call('SMEMBERS', P .. 'iw:' .. gone)) do
      set_watch(name, gone, nil)
      unwatched(name, ms, acc)
    end
    redis.call('DEL', P .. 'iw:' .. gone)
    redis.call('ZREM', P .. 'inst', gone)
  end
  local expired = 0
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. 'idle', '-inf', ms - ttl, 'LIMIT', 0, 1000)) do
    if redis.call('EXISTS', P .. 'w:' .. name) == 0 then
      remove(name, acc)
      expired = expired + 1
    else
      redis.call('ZREM', P .. 'idle', name)
    end
  end
  acc.x = expired
  add_totals(acc)
  local st = redis.call('HMGET', P .. 'st', 'r', 'rb', 'n', 'e', 'x')
  return {
    registered and 1 or 0, redis.call('GET', P .. 'epoch'), expired,
    tonumber(redis.call('GET', P .. 'nm') or '0'), tonumber(redis.call('GET', P .. 'ng') or '0'),
    tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0'),
    tonumber(st[4] or '0'), tonumber(st[5] or '0'),
  }
end)
