//! The queue's Lua scripts: each runs atomically in Redis and declares every key it touches
//! (all under the one hash tag, so a cluster runs each on one node).

/// Adds job ids that the queue does not hold yet, first handing some to a consumer of this
/// worker whose jobs are started already (the relay's hand-off). ARGV: the group, the
/// consumer, how many jobs to hand over and their ids, then job id and delay pairs; a job
/// with a delay (in ms of Redis's clock) goes to the delayed set.
///
/// The jobs to hand over are added and read for the consumer (their lease) only when the
/// group has delivered every entry of the stream: a read takes the oldest entries not yet
/// delivered, so only then are those the new ones. Otherwise they are not added at all, and
/// the caller gives their attempts back before it enqueues them. A job the queue holds
/// already is not handed over either: a reconciler found it pending and unknown to the queue
/// between the relay's commit and this call, and queued it, and another runner may hold it
/// now; a second entry would run it twice. Returns how many of the other jobs were added,
/// the entry and job ids handed over, and 1 if the hand-off was made (even when every job
/// was held already, so none is handed over) or 0 if it was refused.
pub const ENQUEUE: &str = r"
local group, consumer, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function later(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms > b_ms or (a_ms == b_ms and tonumber(a_seq) > tonumber(b_seq))
end
local handed = {}
local caught_up = false
if n > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then
      local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
      caught_up = newest == nil or not later(newest[1], fields['last-delivered-id'])
    end
  end
  if caught_up then
    local fresh = 0
    for i = 4, 3 + n do
      if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
        redis.call('XADD', KEYS[1], '*', 'job', ARGV[i])
        fresh = fresh + 1
      end
    end
    if fresh > 0 then
      local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', fresh,
                              'STREAMS', KEYS[1], '>')
      for _, entry in ipairs(read[1][2]) do
        handed[#handed + 1] = entry[1]
        handed[#handed + 1] = entry[2][2]
      end
    end
  end
end
local now_ms
local added = 0
for i = 4 + n, #ARGV, 2 do
  local id, delay = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('SADD', KEYS[2], id) == 1 then
    if delay > 0 then
      if not now_ms then
        local t = redis.call('TIME')
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[3], now_ms + delay, id)
    else
      redis.call('XADD', KEYS[1], '*', 'job', id)
    end
    added = added + 1
  end
end
return {added, handed, (n == 0 or caught_up) and 1 or 0}";

/// Acknowledges deliveries and forgets their jobs (they finished or died). ARGV: the group,
/// then entry id and job id pairs.
pub const FINISH: &str = r"
local entries, jobs = {}, {}
for i = 2, #ARGV, 2 do
  entries[#entries + 1] = ARGV[i]
  jobs[#jobs + 1] = ARGV[i + 1]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
redis.call('SREM', KEYS[2], unpack(jobs))
return #entries";

/// Acknowledges a delivery and schedules the job again after ARGV[4] ms of Redis's clock.
pub const RETRY: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1";

/// Acknowledges a delivery and puts the job back at the end of the stream for another
/// runner (this one is shutting down), if consumer ARGV[4] still owns it: a lease another
/// runner took over stays that runner's. Returns 1 when handed back.
pub const HAND_BACK: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not (pending[1] and pending[1][2] == ARGV[4]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
return 1";

/// Moves due retries into the stream. Returns {moved, ms until the next one or -1}.
pub const PROMOTE: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'job', id)
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next_due[2] then wait = math.max(0, tonumber(next_due[2]) - now_ms) end
return {#due, wait}";

/// Renews the leases of the entries ARGV[3..] that consumer ARGV[2] of group ARGV[1] still
/// owns (their idle time restarts). Returns the entries another consumer owns now: another
/// runner took them over while this one stalled, and they stay that runner's. An entry no
/// longer pending at all is settled (typically by this runner, between the caller's list
/// and this call): nothing to renew, nothing lost.
pub const HEARTBEAT: &str = r"
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] then
    if pending[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost";

/// Acknowledges and deletes stream entries that carry no job id (nothing can run them).
/// ARGV: the group, then the entry ids.
pub const DISCARD: &str = r"
local entries = {}
for i = 2, #ARGV do entries[#entries + 1] = ARGV[i] end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
return #entries";

/// Deletes the consumers of group ARGV[1] that hold no delivery and have not read for ARGV[2]
/// ms: runners that are gone (a killed worker's consumer would otherwise stay in the group
/// for ever). Atomic, so a consumer that reads meanwhile is not deleted with a delivery in
/// hand; a live runner deleted while idle is created again by its next read. Returns how
/// many were deleted.
pub const FORGET_CONSUMERS: &str = r"
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local fields = {}
    for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
    if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[2]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
        forgotten = forgotten + 1
    end
end
return forgotten
";
