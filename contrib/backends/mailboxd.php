<?php
// A mailboxd control-socket client for PHP backends (no extensions needed).
//
//   require 'mailboxd.php';
//   $mb = new Mailboxd('/run/mailboxd/control.sock');
//   [$id, $live] = $mb->send('alice', 'hello');            // $live == 0: offline
//   $mb->join('room42', ['alice', 'bob']);
//   $mb->publish('room42', 'hi all', 'chat', ['alice']);   // no echo to alice
//
// Errors from the server throw MailboxdException with the stable code.
// From a shell: php mailboxd.php SOCKET send alice hi
//
// mailboxd_token($key, 'alice', 300) signs a browser's access token without
// a round trip (mailboxd with --secret-file; see docs/security.md).

/** The signing key: the secret file without trailing spaces, tabs, CR and LF. */
function mailboxd_key(string $path): string
{
    return rtrim(file_get_contents($path), " \t\r\n");
}

/** A token opening $mailbox for $ttl seconds. */
function mailboxd_token(string $key, string $mailbox, int $ttl, ?int $now = null): string
{
    $expiry = ($now ?? time()) + $ttl;
    $tag = hash_hmac('sha256', "mailboxd-token-v1\n$mailbox\n$expiry", $key, true);
    return "v1.$expiry." . rtrim(strtr(base64_encode($tag), '+/', '-_'), '=');
}

class MailboxdException extends Exception
{
    public string $errorCode;

    public function __construct(string $line)
    {
        $parts = explode(' ', $line, 3);
        $this->errorCode = $parts[1] ?? '?';
        parent::__construct($line);
    }
}

class Mailboxd
{
    private $conn;

    public function __construct(?string $path = null, float $timeout = 5.0)
    {
        // mailboxd's own default: /run/mailboxd for root, else $XDG_RUNTIME_DIR/mailboxd.
        $path ??= getenv('MAILBOXD_SOCKET') ?: (posix_getuid() === 0
            ? '/run/mailboxd/control.sock'
            : (getenv('XDG_RUNTIME_DIR') ?: getenv('HOME')) . (getenv('XDG_RUNTIME_DIR') ? '/mailboxd' : '/.mailboxd') . '/control.sock');
        $this->conn = @stream_socket_client('unix://' . $path, $errno, $errstr, $timeout);
        if ($this->conn === false) {
            throw new RuntimeException("mailboxd: cannot connect to $path: $errstr");
        }
        stream_set_timeout($this->conn, (int) ceil($timeout));
    }

    /**
     * One request: "$line", or for payload commands "$line <len>$options"
     * followed by the payload. Returns the reply line; throws on ERR.
     */
    private function request(string $line, ?string $payload = null, string $options = ''): string
    {
        $raw = $payload === null ? "$line\n" : "$line " . strlen($payload) . "$options\n$payload\n";
        if (fwrite($this->conn, $raw) !== strlen($raw)) {
            throw new RuntimeException('mailboxd: write failed');
        }
        $reply = fgets($this->conn);
        if ($reply === false) {
            throw new RuntimeException('mailboxd: connection closed or timed out');
        }
        $reply = rtrim($reply, "\n");
        if (str_starts_with($reply, 'ERR')) {
            throw new MailboxdException($reply);
        }
        return $reply;
    }

    /** @return array{int,int} [message id, live subscribers] */
    public function send(string $mailbox, string $data, ?string $event = null): array
    {
        return self::pair($this->request("SEND $mailbox", $data, $event === null ? '' : " event=$event"));
    }

    /** @return array{int,int} [mailboxes delivered to, live subscribers] */
    public function publish(string $group, string $data, ?string $event = null, array $except = []): array
    {
        $options = ($event === null ? '' : " event=$event") . ($except ? ' except=' . implode(',', $except) : '');
        return self::pair($this->request("PUBLISH $group", $data, $options));
    }

    public function join(string $group, array $mailboxes): int
    {
        return (int) explode(' ', $this->request("JOIN $group " . implode(' ', $mailboxes)))[1];
    }

    public function leave(string $group, array $mailboxes): int
    {
        return (int) explode(' ', $this->request("LEAVE $group " . implode(' ', $mailboxes)))[1];
    }

    /** @return array<string,int> subscribers, retained, last_id, groups, idle */
    public function info(string $mailbox): array
    {
        $info = [];
        foreach (array_slice(explode(' ', $this->request("INFO $mailbox")), 1) as $field) {
            [$k, $v] = explode('=', $field, 2);
            $info[$k] = (int) $v;
        }
        return $info;
    }

    private static function pair(string $reply): array
    {
        $p = explode(' ', $reply);
        return [(int) $p[1], (int) $p[2]];
    }
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    if ($argc < 4) {
        fwrite(STDERR, "usage: php mailboxd.php SOCKET send MAILBOX DATA | publish GROUP DATA [EXCEPT...]\n");
        exit(2);
    }
    try {
        $mb = new Mailboxd($argv[1]);
        $result = match ($argv[2]) {
            'send' => $mb->send($argv[3], $argv[4]),
            'publish' => $mb->publish($argv[3], $argv[4], null, array_slice($argv, 5)),
            default => throw new InvalidArgumentException("unknown command {$argv[2]}"),
        };
        echo implode(' ', $result), "\n";
    } catch (MailboxdException $e) {
        fwrite(STDERR, $e->getMessage() . "\n");
        exit(1);
    }
}
