//! The Lua scripts that keep presence, the per-user cap and node liveness
//! in Redis. Each runs atomically, so a change and the `user_joined` /
//! `user_left` it causes are one step, published on the room's channel in
//! the same order as its messages.
//!
//! Keys (`P` is `--cluster-prefix`; each lives on its room's or user's
//! shard, the node keys on every shard):
//!
//! ```text
//! P:ru:<room>               hash user -> connections in the room, all nodes
//! P:rm:<room>               hash user -> "<since ms>\n<info>"
//! P:rn:<len>:<node>:<room>  hash user -> "<connections on that node>:<generation>"
//! P:nr:<node>               hash room -> generation (rooms the node asserted)
//! P:uc:<user>               hash node -> the user's connections on that node
//! P:nu:<node>               hash user -> generation (users the node asserted)
//! P:nodes                   zset node -> last heartbeat (Redis time, ms)
//! P:stats                   hash node -> the node's summary for the dashboard
//!                           (JSON; first shard only, written by its heartbeat)
//! ```
//!
//! Channels: `P:r:<room>`, `P:u:<user>`, `P:all`, `P:n:<node>` (the node's
//! own heartbeat, which proves its subscriber connection hears).
//!
//! A node only ever asserts absolute numbers ("this node holds n"), so
//! saying it again after a reconnect changes nothing, and a generation per
//! connection lets one sweep remove what the node no longer holds.
//!
//! Backstop: every key a node writes expires after [`KEY_TTL_SECS`] unless
//! refreshed (each write, and `REFRESH` once a minute for all the node
//! holds), so even entries of a node that vanished unseen do not live on.

/// Seconds a presence key lives without being refreshed.
pub const KEY_TTL_SECS: u64 = 3600;

/// Functions every script shares.
const COMMON: &str = r#"
local function rn_key(p, node, room) return p..':rn:'..#node..':'..node..':'..room end
local function count_of(v) return v and tonumber(string.match(v, '^(%d+)')) or 0 end
local function gen_of(v) return v and tonumber(string.match(v, ':(%d+)$')) or 0 end

-- This node now holds n connections of user in room; announce the user's
-- arrival or departure over all nodes.
local function set_user(p, room, node, user, n, since, info, conn, limit, gen)
  local ru, rm, rn = p..':ru:'..room, p..':rm:'..room, rn_key(p, node, room)
  local old = count_of(redis.call('HGET', rn, user))
  if n > 0 then
    redis.call('HSET', rn, user, n..':'..gen)
    redis.call('HSET', p..':nr:'..node, room, gen)
    redis.call('EXPIRE', rn, TTL)
    redis.call('EXPIRE', p..':nr:'..node, TTL)
  elseif old > 0 then
    redis.call('HDEL', rn, user)
    if redis.call('EXISTS', rn) == 0 then redis.call('HDEL', p..':nr:'..node, room) end
  end
  local delta = n - old
  -- A join's place in the channel's order: from here on the joining
  -- connection gets the room's messages. Its user_joined marks it when
  -- there is one; otherwise (another device, a big room, or a count Redis
  -- already had) a marker does.
  local function mark()
    if conn ~= '-' then redis.call('PUBLISH', p..':r:'..room, 'M '..node..' '..conn..'\n') end
  end
  if delta == 0 then
    if n > 0 then mark() end
    return
  end
  -- A count Redis had too high (an update lost before a re-assertion):
  -- the join is still marked.
  if delta < 0 and n > 0 then mark() end
  local total = redis.call('HINCRBY', ru, user, delta)
  redis.call('EXPIRE', ru, TTL)
  if total <= 0 then
    redis.call('HDEL', ru, user)
    redis.call('HDEL', rm, user)
    local members = redis.call('HLEN', ru)
    if total - delta > 0 and members < limit then
      redis.call('PUBLISH', p..':r:'..room, 'L '..node..' '..members..' '..#user..'\n'..user)
    end
  elseif delta > 0 then
    local meta = redis.call('HGET', rm, user)
    local first = meta and string.match(meta, '^(%d+)') or since
    redis.call('HSET', rm, user, first..'\n'..info)
    redis.call('EXPIRE', rm, TTL)
    local announced = false
    if total == delta then
      local members = redis.call('HLEN', ru)
      if members <= limit then
        redis.call('PUBLISH', p..':r:'..room,
          'J '..node..' '..conn..' '..members..' '..#user..'\n'..user..info)
        announced = true
      end
    end
    if not announced then mark() end
  end
end

-- The room's member count, then up to k users as (user, connections, meta).
local function listing(p, room, k)
  local ru, rm = p..':ru:'..room, p..':rm:'..room
  local out = {redis.call('HLEN', ru)}
  if k <= 0 then return out end
  local some = redis.call('HRANDFIELD', ru, k, 'WITHVALUES')
  for i = 1, #some, 2 do
    out[#out + 1] = some[i]
    out[#out + 1] = some[i + 1]
    out[#out + 1] = redis.call('HGET', rm, some[i]) or '0\n'
  end
  return out
end

-- One bounded step of forgetting everything node asserted (a dead node,
-- or this one shutting down): at most about `budget` entries, drawn at
-- random and removed, so every step progresses without a cursor. Returns
-- true once nothing is left.
local function drain_step(p, node, limit, budget)
  local nr, nu = p..':nr:'..node, p..':nu:'..node
  while budget > 0 do
    local rooms = redis.call('HRANDFIELD', nr, 20)
    if #rooms == 0 then break end
    for _, room in ipairs(rooms) do
      local rn = rn_key(p, node, room)
      local some = redis.call('HRANDFIELD', rn, 100)
      for _, user in ipairs(some) do
        set_user(p, room, node, user, 0, '0', '', '-', limit, 0)
        -- Whatever it held (even a value that is no count): gone.
        redis.call('HDEL', rn, user)
      end
      budget = budget - #some - 1
      if redis.call('EXISTS', rn) == 0 then redis.call('HDEL', nr, room) end
    end
  end
  if budget <= 0 then return false, 0 end
  local users = redis.call('HRANDFIELD', nu, budget)
  for _, user in ipairs(users) do
    redis.call('HDEL', p..':uc:'..user, node)
    redis.call('HDEL', nu, user)
  end
  budget = budget - #users
  return redis.call('EXISTS', nr) == 0 and redis.call('EXISTS', nu) == 0, budget
end

-- One bounded step of forgetting what node asserted before generation
-- below (0: everything): about 50 of its rooms from HSCAN `cursor`
-- (phase 0), then its users (phase 1). Returns {phase, cursor}; phase 2
-- is done. Deleting while scanning is safe (SCAN returns what stays).
local function forget_step(p, node, limit, below, phase, cursor)
  local nr, nu = p..':nr:'..node, p..':nu:'..node
  if phase == 0 then
    local r = redis.call('HSCAN', nr, cursor, 'COUNT', 50)
    for i = 1, #r[2], 2 do
      local room = r[2][i]
      local rn = rn_key(p, node, room)
      local held = redis.call('HGETALL', rn)
      for j = 1, #held, 2 do
        if below == 0 or gen_of(held[j + 1]) < below then
          set_user(p, room, node, held[j], 0, '0', '', '-', limit, 0)
        end
      end
      if redis.call('EXISTS', rn) == 0 then redis.call('HDEL', nr, room) end
    end
    if r[1] == '0' then return {1, '0'} end
    return {0, r[1]}
  end
  local r = redis.call('HSCAN', nu, cursor, 'COUNT', 200)
  for i = 1, #r[2], 2 do
    if below == 0 or tonumber(r[2][i + 1]) < below then
      redis.call('HDEL', p..':uc:'..r[2][i], node)
      redis.call('HDEL', nu, r[2][i])
    end
  end
  if r[1] == '0' then return {2, '0'} end
  return {1, r[1]}
end
"#;

/// `SET p room node user n since info conn limit list gen`: one presence
/// change; answers the listing (`list` users, 0 for the count alone).
const SET: &str = r#"
local a = ARGV
set_user(a[1], a[2], a[3], a[4], tonumber(a[5]), a[6], a[7], a[8], tonumber(a[9]), a[11])
return listing(a[1], a[2], tonumber(a[10]))
"#;

/// `QUERY p room list totals`: the listing; with `totals` 1, the room's
/// connections over all nodes follow the member count.
const QUERY: &str = r#"
local out = listing(ARGV[1], ARGV[2], tonumber(ARGV[3]))
if ARGV[4] == '1' then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', ARGV[1]..':ru:'..ARGV[2])) do total = total + tonumber(v) end
  table.insert(out, 2, total)
end
return out
"#;

/// `SYNC p room node limit gen (user n since info)*`: re-assert some of
/// this node's users of a room in generation `gen` (after a reconnect; in
/// chunks: what is not re-asserted goes with the sweep that follows).
const SYNC: &str = r#"
local p, room, node, limit, gen = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
for i = 6, #ARGV, 4 do
  set_user(p, room, node, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], '-', limit, gen)
end
return 1
"#;

/// `USER p user node n cap gen`: this node holds n connections of user.
/// Answers 0 (and changes nothing) when that would put the user over `cap`
/// connections over all nodes (`cap` 0: no check).
const USER: &str = r#"
local p, user, node, n, cap, gen = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local uc = p..':uc:'..user
local old = tonumber(redis.call('HGET', uc, node) or '0')
if cap > 0 and n > old then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', uc)) do total = total + tonumber(v) end
  if total - old + n > cap then return 0 end
end
if n > 0 then
  redis.call('HSET', uc, node, n)
  redis.call('HSET', p..':nu:'..node, user, gen)
  redis.call('EXPIRE', uc, TTL)
  redis.call('EXPIRE', p..':nu:'..node, TTL)
else
  redis.call('HDEL', uc, node)
  redis.call('HDEL', p..':nu:'..node, user)
end
return 1
"#;

/// `BEAT p node dead_after_ms limit entries summary listed`: this node is
/// alive (and hears its own channel); a node silent for `dead_after_ms` is
/// forgotten, its users' `user_left` announced, at most `entries` per beat
/// (so no beat blocks Redis for long). A non-empty `summary` (this node's
/// figures for the dashboard) is kept in `p:stats`. Answers [live nodes,
/// nodes fully forgotten, 1 if this node was not listed or listed as dead
/// (first beat, or others took it for dead), the summaries of at most
/// `listed` live nodes].
const BEAT: &str = r#"
local p, node, dead_after, limit, most = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = p..':nodes'
-- Taken for dead (or new): no score, or one older than the timeout.
local last = redis.call('ZSCORE', nodes, node)
local added = 0
if not last or now - tonumber(last) >= dead_after then added = 1 end
redis.call('ZADD', nodes, now, node)
redis.call('PUBLISH', p..':n:'..node, 'H')
local stats = p..':stats'
if ARGV[6] ~= '' then
  redis.call('HSET', stats, node, ARGV[6])
  redis.call('EXPIRE', stats, TTL)
end
-- One dead node per beat, at most `most` entries: it stays listed (and
-- dead) until forgotten, so the next beat of any node goes on.
local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', now - dead_after, 'LIMIT', 0, 8)
local reaped = 0
for _, d in ipairs(dead) do
  if most <= 0 or d == node then break end
  local done
  done, most = drain_step(p, d, limit, most)
  if done then
    redis.call('ZREM', nodes, d)
    redis.call('HDEL', stats, d)
    reaped = reaped + 1
  end
end
local listed = {}
local want = tonumber(ARGV[7])
if want > 0 then
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes, now - dead_after, '+inf', 'LIMIT', 0, want)) do
    local s = redis.call('HGET', stats, n)
    if s then listed[#listed + 1] = s end
  end
end
return {redis.call('ZCOUNT', nodes, now - dead_after, '+inf'), reaped, added, listed}
"#;

/// `REFRESH p node phase cursor`: one bounded step of keeping alive the
/// keys of what this node holds: its rooms (phase 0), then its users
/// (phase 1). Answers {phase, cursor}: the caller goes on until phase 2.
const REFRESH: &str = r#"
local p, node, phase, cursor = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local nr, nu = p..':nr:'..node, p..':nu:'..node
if phase == 0 then
  local r = redis.call('HSCAN', nr, cursor, 'COUNT', 200)
  for i = 1, #r[2], 2 do
    local room = r[2][i]
    redis.call('EXPIRE', rn_key(p, node, room), TTL)
    redis.call('EXPIRE', p..':ru:'..room, TTL)
    redis.call('EXPIRE', p..':rm:'..room, TTL)
  end
  redis.call('EXPIRE', nr, TTL)
  redis.call('EXPIRE', p..':nodes', TTL)
  if r[1] == '0' then return {1, '0'} end
  return {0, r[1]}
end
local r = redis.call('HSCAN', nu, cursor, 'COUNT', 200)
for i = 1, #r[2], 2 do
  redis.call('EXPIRE', p..':uc:'..r[2][i], TTL)
end
redis.call('EXPIRE', nu, TTL)
if r[1] == '0' then return {2, '0'} end
return {1, r[1]}
"#;

/// `SWEEP p node limit gen phase cursor`: one bounded step of forgetting
/// what this node asserted before `gen` (after a re-assertion); `gen` 0
/// forgets everything and, at the end, the node itself (shutdown).
/// Answers {phase, cursor}: the caller goes on until phase 2.
const SWEEP: &str = r#"
local p, node, limit, gen = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if gen == 0 then
  if drain_step(p, node, limit, 2000) then
    redis.call('ZREM', p..':nodes', node)
    redis.call('HDEL', p..':stats', node)
    return {2, '0'}
  end
  return {0, '0'}
end
return forget_step(p, node, limit, gen, tonumber(ARGV[5]), ARGV[6])
"#;

/// The scripts, in the order of [`Script`].
pub const ALL: [&str; 7] = [SET, QUERY, SYNC, USER, BEAT, SWEEP, REFRESH];

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Set = 0,
    Query = 1,
    Sync = 2,
    User = 3,
    Beat = 4,
    Sweep = 5,
    Refresh = 6,
}

impl Script {
    /// Script number `i` of [`ALL`].
    pub fn nth(i: usize) -> Script {
        [
            Script::Set,
            Script::Query,
            Script::Sync,
            Script::User,
            Script::Beat,
            Script::Sweep,
            Script::Refresh,
        ][i]
    }
}

/// Script `i`'s full text (the shared functions, then its body).
pub fn source(i: usize) -> String {
    format!("local TTL = {KEY_TTL_SECS}\n{COMMON}{}", ALL[i])
}
