//! The Lua scripts: each runs atomically in Redis, so several servers can run them at once.

use std::sync::LazyLock;

use redis::Script;

/// Adds a delayed message to the delayed set, due `ARGV[1]` ms after Redis's own clock
/// (so that producers' clocks do not matter).
///
/// KEYS: the delayed set. ARGV: delay in ms, member.
pub(super) static DELAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return 1
",
    )
});

/// Moves up to `ARGV[1]` due members of the delayed set into the stream, each exactly
/// once: the move and the removal happen in one script. A member that does not unpack is
/// added as an entry with a `malformed` field, so that the consumer dead-letters it rather
/// than the set jamming. Returns `{moved, ms until the next is due or -1}`.
///
/// KEYS: the delayed set, the stream. ARGV: how many to move at most.
pub(super) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local ok, parts = pcall(cmsgpack.unpack, member)
  local args = {KEYS[2]}
  if ok and type(parts) == 'table' and #parts >= 2 then
    if parts[2] ~= '0' then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = parts[2]
    end
    args[#args + 1] = '*'
    for i = 3, #parts do args[#args + 1] = parts[i] end
  else
    args[#args + 1] = '*'
    args[#args + 1] = 'malformed'
    args[#args + 1] = member
  end
  redis.call('XADD', unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {#due, wait}
",
    )
});

/// Takes over what the group's parking consumer holds (what servers handed back when they
/// shut down), or else XAUTOCLAIMs idle entries; either way with each entry's delivery
/// count, which XCLAIM and XAUTOCLAIM do not return. Returns `{next cursor, entries,
/// counts, more}`, `more` being 1 when parked entries may remain.
///
/// KEYS: the stream. ARGV: group, consumer, min idle ms, cursor, count, parking consumer.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local function counts_of(entries)
  local counts = {}
  for i, entry in ipairs(entries) do
    local p = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
    if p[1] then counts[i] = p[1][4] else counts[i] = 1 end
  end
  return counts
end
local parked = redis.call('XPENDING', stream, group, '-', '+', tonumber(ARGV[5]), ARGV[6])
if #parked > 0 then
  local ids = {}
  for i, p in ipairs(parked) do ids[i] = p[1] end
  local entries = redis.call('XCLAIM', stream, group, consumer, 0, unpack(ids))
  return {ARGV[4], entries, counts_of(entries), 1}
end
local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
return {r[1], r[2], counts_of(r[2]), 0}
",
    )
});

/// Resets the idle time of the entries this consumer still holds (a receiver runs them, or
/// they wait for their next attempt), so that no other consumer takes them over: `min_idle`
/// then only decides how soon a dead consumer's entries come back. An entry another
/// consumer took meanwhile is left to it. Returns how many were refreshed.
///
/// KEYS: the stream. ARGV: group, consumer, then the entry ids.
pub(super) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1, consumer)
  if p[1] then
    redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
",
    )
});

/// Removes the consumer from the group when it holds nothing pending. Returns 1 when it
/// was removed.
///
/// KEYS: the stream. ARGV: group, consumer.
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});
