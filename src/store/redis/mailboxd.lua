#!lua name=mailboxd
-- The mailboxd function library: every change to shared mailboxes and
-- groups is one of these functions, so each is atomic in Redis and costs
-- one round trip. mailboxd loads it with FUNCTION LOAD REPLACE on every
-- connection. Times come from Redis's own clock (TIME), so instances'
-- clocks never matter. Ids are strings of decimal digits everywhere
-- (Lua's numbers would print large ones in exponent form).
--
-- Keys (P = 'mbx:'):
--   P..'id'          last message id issued (seeded from TIME in µs)
--   P..'disc'        highest id discarded with a removed mailbox
--   P..'nm', P..'ng' mailboxes and groups in existence
--   P..'st'          hash of totals: r retained, rb bytes, n messages,
--                    e evicted, x expired
--   P..'m:'..name    hash of a mailbox: h horizon, b bytes (its last id is
--                    its newest entry's, or h when it holds none)
--   P..'q:'..name    list of its retained messages: '<id> <event>\n<data>'
--   P..'mg:'..name   set of its groups
--   P..'w:'..name    hash: instance -> its subscribers on the mailbox
--   P..'g:'..group   set of a group's members
--   P..'idle'        zset: unwatched mailbox -> ms since when
--   P..'inst'        zset: instance -> ms of its last heartbeat
--   P..'iw:'..inst   set of the mailboxes an instance watches
--   P..'c:'..inst    the instance's pub/sub channel (not a key)
--   P..'epoch'       set once; a new value means Redis lost its data

local P = 'mbx:'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Allocates n consecutive ids; returns the first, as a number.
local function take_ids(n)
  if redis.call('EXISTS', P .. 'id') == 0 then
    local t = redis.call('TIME')
    redis.call('SET', P .. 'id', t[1] .. string.format('%06d', tonumber(t[2])))
  end
  return redis.call('INCRBY', P .. 'id', n) - n + 1
end

local function fmt(id)
  return string.format('%d', id)
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
  local disc = redis.call('GET', P .. 'disc') or '0'
  redis.call('HSET', m, 'h', disc, 'b', 0)
  redis.call('ZADD', P .. 'idle', ms, name)
  return true
end

-- The id of a mailbox's newest message, or its horizon; false if it is gone.
local function last_id(name)
  local tail = redis.call('LINDEX', P .. 'q:' .. name, -1)
  if tail then
    return string.match(tail, '^%d+')
  end
  local h = redis.call('HGET', P .. 'm:' .. name, 'h')
  return h or false
end

-- Removes a mailbox and its memberships; returns its watching instances.
local function remove(name)
  local m = P .. 'm:' .. name
  local last = last_id(name)
  if not last then
    return {}
  end
  for _, g in ipairs(redis.call('SMEMBERS', P .. 'mg:' .. name)) do
    redis.call('SREM', P .. 'g:' .. g, name)
    if redis.call('SCARD', P .. 'g:' .. g) == 0 then
      redis.call('DECR', P .. 'ng')
    end
  end
  local q = P .. 'q:' .. name
  -- (Never HINCRBY by 0: Lua would send '-0', which Redis refuses.)
  local count, bytes = redis.call('LLEN', q), tonumber(redis.call('HGET', m, 'b'))
  if count > 0 then redis.call('HINCRBY', P .. 'st', 'r', 0 - count) end
  if bytes > 0 then redis.call('HINCRBY', P .. 'st', 'rb', 0 - bytes) end
  local watchers = redis.call('HKEYS', P .. 'w:' .. name)
  for _, inst in ipairs(watchers) do
    redis.call('SREM', P .. 'iw:' .. inst, name)
  end
  if tonumber(last) > tonumber(redis.call('GET', P .. 'disc') or '0') then
    redis.call('SET', P .. 'disc', last)
  end
  redis.call('DEL', m, q, P .. 'mg:' .. name, P .. 'w:' .. name)
  redis.call('ZREM', P .. 'idle', name)
  redis.call('DECR', P .. 'nm')
  return watchers
end

-- No instance watches it any more: it goes at once if it holds nothing,
-- else its expiry clock starts.
local function unwatched(name, ms)
  local m = P .. 'm:' .. name
  if redis.call('EXISTS', m) == 0 or redis.call('EXISTS', P .. 'w:' .. name) == 1 then
    return
  end
  if redis.call('LLEN', P .. 'q:' .. name) == 0 and redis.call('EXISTS', P .. 'mg:' .. name) == 0 then
    remove(name)
  else
    redis.call('ZADD', P .. 'idle', ms, name)
  end
end

-- Appends one message to a mailbox and applies its retention; adds to the
-- totals in `acc`.
local function append(name, entry, retain, retain_bytes, acc)
  local q = P .. 'q:' .. name
  local m = P .. 'm:' .. name
  local len = redis.call('RPUSH', q, entry)
  local bytes = redis.call('HINCRBY', m, 'b', #entry)
  acc.r = acc.r + 1
  acc.rb = acc.rb + #entry
  while len > retain or (bytes > retain_bytes and len > 1) do
    local old = redis.call('LPOP', q)
    redis.call('HSET', m, 'h', string.match(old, '^%d+'))
    bytes = redis.call('HINCRBY', m, 'b', 0 - #old)
    len = len - 1
    acc.r = acc.r - 1
    acc.rb = acc.rb - #old
    acc.e = acc.e + 1
  end
end

local function add_totals(acc)
  local st = P .. 'st'
  if acc.r ~= 0 then redis.call('HINCRBY', st, 'r', acc.r) end
  if acc.rb ~= 0 then redis.call('HINCRBY', st, 'rb', acc.rb) end
  if acc.n ~= 0 then redis.call('HINCRBY', st, 'n', acc.n) end
  if acc.e ~= 0 then redis.call('HINCRBY', st, 'e', acc.e) end
  if acc.x ~= 0 then redis.call('HINCRBY', st, 'x', acc.x) end
end

local function totals()
  return { r = 0, rb = 0, n = 0, e = 0, x = 0 }
end

-- Adds a delivery to the batch of every instance watching `name`;
-- returns the subscribers reached.
local function route(name, id, batches, order)
  local live = 0
  local w = redis.call('HGETALL', P .. 'w:' .. name)
  for i = 1, #w, 2 do
    local inst = w[i]
    local b = batches[inst]
    if not b then
      b = {}
      batches[inst] = b
      order[#order + 1] = inst
    end
    b[#b + 1] = fmt(id) .. ' ' .. name .. '\n'
    live = live + tonumber(w[i + 1])
  end
  return live
end

-- One notification per instance: 'D <count> <event>\n', one
-- '<id> <mailbox>\n' line per delivery, then the data.
local function notify(batches, order, event, data)
  for _, inst in ipairs(order) do
    local b = batches[inst]
    redis.call('PUBLISH', P .. 'c:' .. inst,
      'D ' .. #b .. ' ' .. event .. '\n' .. table.concat(b) .. data)
  end
end

-- mbx_send: name event data retain retain_bytes max_mailboxes -> {id, live}
redis.register_function('mbx_send', function(_, a)
  local name, event, data = a[1], a[2], a[3]
  local ms = now_ms()
  if not ensure(name, ms, tonumber(a[6])) then
    return redis.error_reply('FULL mailboxes')
  end
  local id = take_ids(1)
  local acc = totals()
  acc.n = 1
  append(name, fmt(id) .. ' ' .. event .. '\n' .. data, tonumber(a[4]), tonumber(a[5]), acc)
  local batches, order = {}, {}
  local live = route(name, id, batches, order)
  notify(batches, order, event, data)
  add_totals(acc)
  return { fmt(id), live }
end)

-- mbx_publish: group event data retain retain_bytes except... -> {reached, live}
redis.register_function('mbx_publish', function(_, a)
  local group, event, data = a[1], a[2], a[3]
  local retain, retain_bytes = tonumber(a[4]), tonumber(a[5])
  local excluded = {}
  for i = 6, #a do
    excluded[a[i]] = true
  end
  local members = {}
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'g:' .. group)) do
    if not excluded[name] then
      members[#members + 1] = name
    end
  end
  if #members == 0 then
    return { 0, 0 }
  end
  local first = take_ids(#members)
  local acc = totals()
  acc.n = #members
  local batches, order = {}, {}
  local live = 0
  local tail = ' ' .. event .. '\n' .. data
  for i, name in ipairs(members) do
    local id = fmt(first + i - 1)
    append(name, id .. tail, retain, retain_bytes, acc)
    live = live + route(name, first + i - 1, batches, order)
  end
  notify(batches, order, event, data)
  add_totals(acc)
  return { #members, live }
end)

-- mbx_open: name inst client_limit -> {horizon, last, {entries}}; the
-- instance is registered as watching it in the same step, so nothing
-- stored after this is missed.
redis.register_function('mbx_open', function(_, a)
  local name, inst = a[1], a[2]
  if not ensure(name, now_ms(), tonumber(a[3])) then
    return redis.error_reply('FULL mailboxes')
  end
  redis.call('HSETNX', P .. 'w:' .. name, inst, 0)
  redis.call('SADD', P .. 'iw:' .. inst, name)
  redis.call('ZREM', P .. 'idle', name)
  return { redis.call('HGET', P .. 'm:' .. name, 'h'), last_id(name), redis.call('LRANGE', P .. 'q:' .. name, 0, -1) }
end)

-- mbx_watch: inst (name count keep)... Reports this instance's
-- subscriber counts; keep=0: it lost all interest in the mailbox.
redis.register_function('mbx_watch', function(_, a)
  local inst = a[1]
  local ms = now_ms()
  for i = 2, #a, 3 do
    local name, count, keep = a[i], a[i + 1], a[i + 2]
    if keep == '1' then
      if redis.call('EXISTS', P .. 'm:' .. name) == 1 then
        redis.call('HSET', P .. 'w:' .. name, inst, count)
        redis.call('SADD', P .. 'iw:' .. inst, name)
        redis.call('ZREM', P .. 'idle', name)
      end
    else
      redis.call('HDEL', P .. 'w:' .. name, inst)
      redis.call('SREM', P .. 'iw:' .. inst, name)
      unwatched(name, ms)
    end
  end
  return #a
end)

-- mbx_reset: inst. After a reconnection: forgets every registration of
-- the instance (mbx_resync makes the ones still true again). Nothing is
-- removed here, even a mailbox that holds nothing: it only starts to idle.
redis.register_function('mbx_reset', function(_, a)
  local inst = a[1]
  local ms = now_ms()
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'iw:' .. inst)) do
    redis.call('HDEL', P .. 'w:' .. name, inst)
    if redis.call('EXISTS', P .. 'w:' .. name) == 0 and redis.call('EXISTS', P .. 'm:' .. name) == 1 then
      redis.call('ZADD', P .. 'idle', ms, name)
    end
  end
  redis.call('DEL', P .. 'iw:' .. inst)
  return 1
end)

-- mbx_resync: inst (name count seen)... After a reconnection: registers
-- the instance again and returns, per mailbox, {0} if it is gone, else
-- {1, horizon, {entries}} to re-feed its subscribers from.
redis.register_function('mbx_resync', function(_, a)
  local inst = a[1]
  local out = {}
  for i = 2, #a, 3 do
    local name, count = a[i], a[i + 1]
    local m = P .. 'm:' .. name
    if redis.call('EXISTS', m) == 0 then
      out[#out + 1] = { 0 }
    else
      redis.call('HSET', P .. 'w:' .. name, inst, count)
      redis.call('SADD', P .. 'iw:' .. inst, name)
      redis.call('ZREM', P .. 'idle', name)
      out[#out + 1] = { 1, redis.call('HGET', m, 'h'), redis.call('LRANGE', P .. 'q:' .. name, 0, -1) }
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
  if redis.call('EXISTS', g) == 0 then
    if tonumber(redis.call('GET', P .. 'ng') or '0') >= tonumber(a[3]) then
      return redis.error_reply('FULL groups')
    end
    if #a >= 4 then
      redis.call('INCR', P .. 'ng')
    end
  end
  local ms = now_ms()
  for i = 4, #a do
    ensure(a[i], ms, math.huge)
    redis.call('SADD', g, a[i])
    redis.call('SADD', P .. 'mg:' .. a[i], group)
  end
  return redis.call('SCARD', g)
end)

-- mbx_leave: group names... -> size
redis.register_function('mbx_leave', function(_, a)
  local group = a[1]
  local g = P .. 'g:' .. group
  if redis.call('EXISTS', g) == 0 then
    return 0
  end
  for i = 2, #a do
    redis.call('SREM', g, a[i])
    redis.call('SREM', P .. 'mg:' .. a[i], group)
  end
  local size = redis.call('SCARD', g)
  if size == 0 then
    redis.call('DECR', P .. 'ng')
  end
  return size
end)

-- mbx_drop: name -> 1, or 0 if there is no such mailbox. Every instance
-- watching it is told to end its streams.
redis.register_function('mbx_drop', function(_, a)
  local name = a[1]
  if redis.call('EXISTS', P .. 'm:' .. name) == 0 then
    return 0
  end
  for _, inst in ipairs(remove(name)) do
    redis.call('PUBLISH', P .. 'c:' .. inst, 'X ' .. name)
  end
  return 1
end)

-- mbx_info: name -> {retained, last, groups, idle_ms, subscribers} or nil
redis.register_function('mbx_info', function(_, a)
  local name = a[1]
  local last = last_id(name)
  if not last then
    return nil
  end
  local since = redis.call('ZSCORE', P .. 'idle', name)
  local idle = 0
  if since then
    idle = now_ms() - tonumber(since)
  end
  local subscribers = 0
  for _, n in ipairs(redis.call('HVALS', P .. 'w:' .. name)) do
    subscribers = subscribers + tonumber(n)
  end
  return { redis.call('LLEN', P .. 'q:' .. name), last, redis.call('SCARD', P .. 'mg:' .. name), idle, subscribers }
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
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', P .. 'inst', '-inf', ms - dead, 'LIMIT', 0, 16)) do
    for _, name in ipairs(redis.call('SMEMBERS', P .. 'iw:' .. gone)) do
      redis.call('HDEL', P .. 'w:' .. name, gone)
      unwatched(name, ms)
    end
    redis.call('DEL', P .. 'iw:' .. gone)
    redis.call('ZREM', P .. 'inst', gone)
  end
  local acc = totals()
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. 'idle', '-inf', ms - ttl, 'LIMIT', 0, 1000)) do
    if redis.call('EXISTS', P .. 'w:' .. name) == 0 then
      remove(name)
      acc.x = acc.x + 1
    else
      redis.call('ZREM', P .. 'idle', name)
    end
  end
  add_totals(acc)
  local st = redis.call('HMGET', P .. 'st', 'r', 'rb', 'n', 'e', 'x')
  return {
    registered and 1 or 0, redis.call('GET', P .. 'epoch'), acc.x,
    tonumber(redis.call('GET', P .. 'nm') or '0'), tonumber(redis.call('GET', P .. 'ng') or '0'),
    tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0'),
    tonumber(st[4] or '0'), tonumber(st[5] or '0'),
  }
end)
