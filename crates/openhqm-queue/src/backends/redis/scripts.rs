//! The Lua scripts that make each settle, move and claim atomic.
//!
//! Every settle script first checks that the caller still holds the entry:
//! it must be pending for this consumer with the delivery count the caller
//! saw. A takeover (XAUTOCLAIM, by another consumer or by this one after the
//! lease ran out) changes the owner or bumps the count, so a stale holder's
//! ack or nack is refused instead of settling someone else's delivery.
//!
//! Scripts read the clock with `TIME`, so every process agrees on due times
//! whatever its own clock says. Delayed retries live in a sorted set
//! `<stream>:delayed` (member = the original entry id, score = due ms) with
//! their fields in a hash `<stream>:delayed:<id>`: a hash keeps the body
//! binary safe without any encoding in Lua.

use redis::Script;

/// `owned(stream, group, id, consumer, count)`: whether the entry is still
/// ours. `pcall`, so a vanished group (Redis restarted empty) reads as lost.
const OWNED: &str = r"
local function owned(stream, group, id, consumer, count)
  local ok, p = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  if not ok or p[1] == nil then return false end
  return p[1][2] == consumer and tonumber(p[1][4]) == tonumber(count)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The entry's fields without the ones a move rewrites.
local function fields_without(fields, drop)
  local out = {}
  for i = 1, #fields, 2 do
    if not drop[fields[i]] then
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  return out
end
local function push(t, k, v)
  t[#t + 1] = k
  t[#t + 1] = v
end
";

/// KEYS: stream. ARGV: group, id, consumer, count. 1 = acked, 0 = lease lost.
const ACK: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// KEYS: stream. ARGV: group, id, consumer, count, idle ms to set.
/// `JUSTID` leaves the delivery count alone, so the caller's count stays valid.
const EXTEND: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
return 1
";

/// KEYS: stream, delayed zset. ARGV: group, id, consumer, count, delay ms,
/// next attempt, origin id.
const RETRY: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if e[1] then
  local out = fields_without(e[1][2], {attempt = true, origin = true})
  push(out, 'attempt', ARGV[6])
  push(out, 'origin', ARGV[7])
  redis.call('HSET', KEYS[2] .. ':' .. ARGV[2], unpack(out))
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[5]), ARGV[2])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// KEYS: stream, dead-letter stream. ARGV: group, id, consumer, count,
/// reason, attempt, origin id.
const DEAD_LETTER: &str = r"
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local out = {}
if e[1] then
  out = fields_without(e[1][2], {attempt = true, origin = true, reason = true, dead_at = true})
end
push(out, 'attempt', ARGV[6])
push(out, 'origin', ARGV[7])
push(out, 'reason', ARGV[5])
push(out, 'dead_at', now_ms())
redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// KEYS: stream, delayed zset. ARGV: group, consumer, lease ms, count,
/// claim cursor.
///
/// Moves due retries back onto the stream, then takes over up to `count`
/// entries idle longer than the lease, scanning the pending list from the
/// cursor. Returns `{claimed, wait, cursor}`: claimed is `{id, fields,
/// delivery count}` triples, wait the ms until the next retry is due (-1 if
/// none), cursor where the next scan starts (`0-0` after a full pass).
const PREPARE: &str = r"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  local hkey = KEYS[2] .. ':' .. m
  local f = redis.call('HGETALL', hkey)
  if #f > 0 then redis.call('XADD', KEYS[1], '*', unpack(f)) end
  redis.call('DEL', hkey)
  redis.call('ZREM', KEYS[2], m)
end
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], 'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(claimed[2]) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    if p[1] then out[#out + 1] = {e[1], e[2], p[1][4]} end
  end
end
local wait = -1
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {out, wait, claimed[1]}
";

/// KEYS: dead-letter stream, stream. ARGV: limit, the redrive marker field.
/// Returns how many moved.
const REDRIVE: &str = r"
local es = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
local at = now_ms()
for _, e in ipairs(es) do
  local out = fields_without(e[2], {attempt = true, reason = true, dead_at = true, [ARGV[2]] = true})
  push(out, 'attempt', '1')
  push(out, ARGV[2], at)
  redis.call('XADD', KEYS[2], '*', unpack(out))
  redis.call('XDEL', KEYS[1], e[1])
end
return #es
";

/// The compiled scripts (their SHA1s), shared by a queue and its deliveries.
/// `FORGET_IDLE(stream; group, self, idle_ms)`: deletes the group's
/// consumers other than `self` that hold nothing and have been idle longer
/// than `idle_ms` (processes gone with a rollout: `<host>-<pid>` names
/// pile up otherwise). In one script, so no consumer can take an entry
/// between the check and the delete, which would drop it from the pending
/// list. Returns how many were deleted.
const FORGET_IDLE: &str = r"
local removed = 0
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0
      and tonumber(f['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
";

pub(crate) struct Scripts {
    pub forget_idle: Script,
    pub ack: Script,
    pub extend: Script,
    pub retry: Script,
    pub dead_letter: Script,
    pub prepare: Script,
    pub redrive: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_helpers = |body: &str| Script::new(&format!("{OWNED}{body}"));
        Self {
            forget_idle: Script::new(FORGET_IDLE),
            ack: with_helpers(ACK),
            extend: with_helpers(EXTEND),
            retry: with_helpers(RETRY),
            dead_letter: with_helpers(DEAD_LETTER),
            prepare: with_helpers(PREPARE),
            redrive: with_helpers(REDRIVE),
        }
    }
}
