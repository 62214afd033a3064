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
//! P:h:<room>                hash e -> the room's history epoch, s -> its latest seq
//! P:hs:<room>               stream of the room's messages: id `<seq>-0`,
//!                           fields o ("<node> <conn|->") and b (the message
//!                           without its seq); at most --history-size, gone
//!                           --history-ttl after the last message
//! ```
//!
//! A room's history hash outlives its stream (it lives as long as the room
//! is used: each message and join refreshes it, and `REFRESH` while a node
//! has members in it, like the presence keys), so its seq keeps counting
//! across a silence and a new epoch means Redis lost it.
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

-- A room's history hash (made, in epoch `candidate`, if Redis has none),
-- kept for the presence keys' TTL or the history's, whichever is longer.
local function history_hash(p, room, candidate, ttl_ms)
  local h = p..':h:'..room
  local epoch = redis.call('HGET', h, 'e')
  if not epoch then
    epoch = candidate
    redis.call('HSET', h, 'e', epoch, 's', 0)
    redis.call('DEL', p..':hs:'..room)
  end
  redis.call('EXPIRE', h, math.max(TTL, math.ceil(ttl_ms / 1000)))
  return h, epoch, tonumber(redis.call('HGET', h, 's')) or 0
end

local function field(kv, name)
  for i = 1, #kv, 2 do if kv[i] == name then return kv[i + 1] end end
end

-- The stream entries after..upto of a room, if it holds every one of them
-- within max_bytes of bodies: {o1, b1, o2, b2, ...}; else nil.
local function entries(p, room, after, upto, max_bytes)
  local got = redis.call('XRANGE', p..':hs:'..room, (after + 1)..'-0', upto..'-0')
  if #got ~= upto - after then return nil end
  local out, bytes = {}, 0
  for i, e in ipairs(got) do
    local o, b = field(e[2], 'o'), field(e[2], 'b')
    if not b or tonumber(string.match(e[1], '^(%d+)')) ~= after + i then return nil end
    bytes = bytes + #b
    if bytes > max_bytes then return nil end
    out[#out + 1] = o or '-'
    out[#out + 1] = b
  end
  return out
end

-- Where a joining client is in a room's history, in the same step as its
-- marker: {epoch, seq, recovered (-1 not asked, 0, 1), missed bodies...}.
-- `since_epoch` is '' (not asked) or '=' and the client's epoch.
local function history_at(p, room, candidate, ttl_ms, since_epoch, since_seq, max, max_bytes)
  local _, epoch, seq = history_hash(p, room, candidate, ttl_ms)
  local out = {epoch, seq, -1}
  if since_epoch == '' then return out end
  since_epoch = string.sub(since_epoch, 2)
  out[3] = 0
  local missed = seq - since_seq
  if since_epoch ~= epoch or missed < 0 or missed > max then return out end
  if missed > 0 then
    local got = entries(p, room, since_seq, seq, max_bytes)
    if not got then return out end
    for i = 2, #got, 2 do out[#out + 1] = got[i] end
  end
  out[3] = 1
  return out
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

/// `SET p room node user n since info conn limit list gen [candidate
/// ttl_ms since_epoch since_seq max max_bytes]`: one presence change; answers the
/// listing (`list` users, 0 for the count alone). With the history part (a
/// join of a room with history), answers {listing, history_at(...)}: the
/// room's place at the join's marker, and with `since` what was missed.
const SET: &str = r#"
local a = ARGV
set_user(a[1], a[2], a[3], a[4], tonumber(a[5]), a[6], a[7], a[8], tonumber(a[9]), a[11])
local l = listing(a[1], a[2], tonumber(a[10]))
if not a[12] then return l end
return {l, history_at(a[1], a[2], a[12], tonumber(a[13]), a[14], tonumber(a[15]), tonumber(a[16]), tonumber(a[17]))}
"#;

/// `HPUB p room node conn body candidate size ttl_ms`: a room message with
/// history: numbered (the room's next seq), kept in the room's stream (at
/// most `size`, for `ttl_ms` after the last), and published as `H` on the
/// room's channel, in one step: the stream's order is the channel's.
/// Answers the number of nodes that received it.
const HPUB: &str = r#"
local p, room, from, body = ARGV[1], ARGV[2], ARGV[3]..' '..ARGV[4], ARGV[5]
local h = p..':h:'..room
local epoch = redis.call('HGET', h, 'e')
local seq
if epoch then
  seq = redis.call('HINCRBY', h, 's', 1)
  -- The hash's expiry (an hour, or a longer --history-ttl) is kept up
  -- every 64 messages (an EXPIRE each time costs Redis a fifth more CPU
  -- per message); joins and each node's REFRESH keep it too while the
  -- room is used. A long --history-ttl keeps it at every message.
  local life = math.ceil(tonumber(ARGV[8]) / 1000)
  if seq % 64 == 0 or life > TTL then redis.call('EXPIRE', h, math.max(TTL, life)) end
else
  h, epoch = history_hash(p, room, ARGV[6], tonumber(ARGV[8]))
  seq = redis.call('HINCRBY', h, 's', 1)
end
local st = p..':hs:'..room
redis.call('XADD', st, 'MAXLEN', '~', ARGV[7], seq..'-0', 'o', from, 'b', body)
redis.call('PEXPIRE', st, ARGV[8])
return redis.call('PUBLISH', p..':r:'..room, 'H '..from..' '..seq..' '..epoch..'\n'..body)
"#;

/// `HFILL p room epoch after upto max_bytes`: messages after..upto of the
/// room's history `epoch`, for a node that missed them: {o1, b1, ...}, or 0
/// when Redis does not hold them all.
const HFILL: &str = r#"
local p, room, after, upto = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('HGET', p..':h:'..room, 'e') ~= ARGV[3] then return 0 end
return entries(p, room, after, upto, tonumber(ARGV[6])) or 0
"#;

/// `HREAD p room since_epoch since_seq limit max_bytes size`: the room's
/// latest messages after `since` (without it: all held, at most the last
/// `size` — the stream is trimmed approximately and may hold a few more;
/// `since_epoch` is '' or '=' and the epoch), at most `limit` and
/// `max_bytes` of them: {epoch or '', seq, truncated, seq1, b1, ...},
/// oldest first; truncated when messages after `since` are left out.
const HREAD: &str = r#"
local p, room, limit, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local h, st = p..':h:'..room, p..':hs:'..room
local epoch = redis.call('HGET', h, 'e')
if not epoch then return {'', 0, 0} end
local seq = tonumber(redis.call('HGET', h, 's')) or 0
local after, foreign = seq, 0
if ARGV[3] == '' then
  local first = redis.call('XRANGE', st, '-', '+', 'COUNT', 1)[1]
  if first then
    after = math.max(tonumber(string.match(first[1], '^(%d+)')) - 1, seq - tonumber(ARGV[7]))
  end
elseif string.sub(ARGV[3], 2) == epoch then
  after = math.min(tonumber(ARGV[4]), seq)
else
  after, foreign = 0, 1
end
local got = {}
if seq > after and limit > 0 then
  got = redis.call('XREVRANGE', st, seq..'-0', (after + 1)..'-0', 'COUNT', limit)
end
local given, bytes = {}, 0
for _, e in ipairs(got) do
  local b = field(e[2], 'b')
  if not b then break end
  bytes = bytes + #b
  if bytes > max_bytes then break end
  given[#given + 1] = {string.match(e[1], '^(%d+)'), b}
end
local truncated = 0
if #given < seq - after or foreign == 1 then truncated = 1 end
local out = {epoch, seq, truncated}
for i = #given, 1, -1 do
  out[#out + 1] = given[i][1]
  out[#out + 1] = given[i][2]
end
return out
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
    -- A room's history place lives while the room is used (never
    -- shortened: a long --history-ttl keeps its own).
    local left = redis.call('TTL', p..':h:'..room)
    if left >= 0 and left < TTL then redis.call('EXPIRE', p..':h:'..room, TTL) end
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
pub const ALL: [&str; 10] = [
    SET, QUERY, SYNC, USER, BEAT, SWEEP, REFRESH, HPUB, HFILL, HREAD,
];

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
    HistoryPublish = 7,
    HistoryFill = 8,
    HistoryRead = 9,
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
            Script::HistoryPublish,
            Script::HistoryFill,
            Script::HistoryRead,
        ][i]
    }
}

/// Script `i`'s full text (the shared functions, then its body).
pub fn source(i: usize) -> String {
    format!("local TTL = {KEY_TTL_SECS}\n{COMMON}{}", ALL[i])
}
