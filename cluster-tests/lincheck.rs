//! Linearizability checker for histories of a key/value store whose keys are
//! independent read/write registers.
//!
//! Self-contained (std only) so that integration tests can include it with
//! `#[path = "lincheck.rs"] mod lincheck;`.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<String>` (`None` =
//! absent). Unless an initial map is supplied, every key starts as `None`.
//! Because the keys are independent, linearizability is checked per key
//! (P-compositionality): the history is linearizable iff every per-key
//! sub-history is.
//!
//! # Operation semantics
//!
//! * An op with `ret: Some(t)` took effect atomically at some point in
//!   `[call, t]`.
//! * A write with `ret: None` (timed out / outcome unknown) either took effect
//!   at some point after `call` (arbitrarily late) or never took effect.
//! * A read with `ret: None` carries no information and is ignored.
//! * Operations that definitely failed must not be passed in.
//!
//! Real-time order: op `A` must be linearized before op `B` iff
//! `A.ret < B.call` (strictly). Equal timestamps are treated as overlapping,
//! which is the permissive choice (same as Porcupine's tie-breaking).
//!
//! # Algorithm
//!
//! Per key, a Wing & Gong / Lowe style depth-first search (as in Knossos and
//! Porcupine): ops are linearized one at a time in an order consistent with
//! real time (an op may come next only if its `call` is not after the minimum
//! `ret` of all not-yet-linearized completed ops), and visited configurations
//! `(set of linearized ops as a bitset, register value)` are memoised.
//! Register-specific reductions keep the search small without losing
//! completeness:
//!
//! * A completed read that may come next and observes the current value is
//!   linearized greedily, without branching (moving such a read earlier never
//!   invalidates a linearization).
//! * An unknown-outcome write never constrains other ops (its `ret` is
//!   infinite) and is only ever placed immediately before a read observing
//!   its value while the register holds something else. Any other placement
//!   is either equivalent to the write never having happened, or can be
//!   rewritten into that form. Unplaced unknown-outcome writes at the end are
//!   fine: they never took effect (or took effect after everything else).
//! * Values that no completed read observes are merged into one "unobserved"
//!   value, and completed writes of such values are never branched on: in any
//!   linearization they are directly followed by another write (or come
//!   last), and placing more of them earlier never hurts, so all of them that
//!   may be placed are absorbed right before each write move, and leftovers
//!   go at the end.
//! * A configuration is pruned as soon as some pending read needs a value that
//!   differs from the register and that no remaining write can produce (e.g.
//!   right after the last write of a value that a later read still observes
//!   is overwritten).
//!
//! These reductions are cross-checked in the unit tests against a brute-force
//! enumeration of all orders straight from the definition.
//!
//! The search is bounded by a per-key budget of explored states; exceeding
//! it yields a [`Violation`] of kind [`ViolationKind::SearchBudgetExhausted`]
//! (an inconclusive result) instead of running forever.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};

/// Default bound on the number of search states explored per key by
/// [`check`] and [`check_with_initial`].
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 1_000_000;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Put `Some(value)`, or delete the key with `None`.
    Write(Option<String>),
    /// Read, with the value observed (`None` = key absent).
    Read(Option<String>),
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// Identifier of the issuing client (informational only).
    pub client: u64,
    /// The key the operation acts on.
    pub key: String,
    /// Write or read, with the value written / observed.
    pub kind: OpKind,
    /// Invocation time, in ns since an arbitrary common origin.
    pub call: u64,
    /// Completion time (same clock as `call`); `None` if the operation timed
    /// out or its outcome is otherwise unknown.
    pub ret: Option<u64>,
}

impl Op {
    /// A put of `value` to `key`.
    pub fn write(
        client: u64,
        key: impl Into<String>,
        value: impl Into<String>,
        call: u64,
        ret: Option<u64>,
    ) -> Self {
        Op {
            client,
            key: key.into(),
            kind: OpKind::Write(Some(value.into())),
            call,
            ret,
        }
    }

    /// A delete of `key` (a write of `None`).
    pub fn delete(client: u64, key: impl Into<String>, call: u64, ret: Option<u64>) -> Self {
        Op {
            client,
            key: key.into(),
            kind: OpKind::Write(None),
            call,
            ret,
        }
    }

    /// A read of `key` that observed `observed` (`None` = key absent).
    pub fn read(
        client: u64,
        key: impl Into<String>,
        observed: Option<&str>,
        call: u64,
        ret: Option<u64>,
    ) -> Self {
        Op {
            client,
            key: key.into(),
            kind: OpKind::Read(observed.map(str::to_owned)),
            call,
            ret,
        }
    }

    /// Whether the operation completed (has a known return time).
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.ret.is_some()
    }
}

fn fmt_value(v: Option<&str>) -> String {
    const MAX_CHARS: usize = 60;
    match v {
        None => "<absent>".to_owned(),
        Some(s) if s.chars().count() > MAX_CHARS => {
            let cut: String = s.chars().take(MAX_CHARS).collect();
            format!("{cut:?}...")
        }
        Some(s) => format!("{s:?}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            OpKind::Write(Some(v)) => write!(
                f,
                "client {} write {:?} := {}",
                self.client,
                self.key,
                fmt_value(Some(v))
            )?,
            OpKind::Write(None) => write!(f, "client {} delete {:?}", self.client, self.key)?,
            OpKind::Read(v) => write!(
                f,
                "client {} read {:?} -> {}",
                self.client,
                self.key,
                fmt_value(v.as_deref())
            )?,
        }
        match self.ret {
            Some(r) => write!(f, " [call {} .. ret {}]", self.call, r),
            None => write!(f, " [call {} .. ret ?]", self.call),
        }
    }
}

/// Summary of a successful check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Number of distinct keys checked.
    pub keys_checked: usize,
    /// Number of ops that took part in the search (completed ops plus
    /// unknown-outcome writes); excludes ignored timed-out reads.
    pub ops_checked: usize,
    /// Completed ops (known return time).
    pub completed_ops: usize,
    /// Writes with unknown outcome (`ret: None`).
    pub unknown_writes: usize,
    /// Reads with `ret: None`, which carry no information and were ignored.
    pub ignored_reads: usize,
    /// Search states explored, summed over all keys.
    pub states_explored: usize,
    /// Largest number of search states explored for a single key.
    pub max_states_for_a_key: usize,
}

impl fmt::Display for CheckStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys, {} ops checked ({} completed, {} unknown-outcome writes, {} timed-out reads ignored), {} states explored (max {} for one key)",
            self.keys_checked,
            self.ops_checked,
            self.completed_ops,
            self.unknown_writes,
            self.ignored_reads,
            self.states_explored,
            self.max_states_for_a_key
        )
    }
}

/// Why a check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// The key's history is definitely not linearizable.
    NotLinearizable,
    /// The per-key search budget ran out before linearizability could be
    /// decided; the result is inconclusive.
    SearchBudgetExhausted,
    /// The history itself is malformed (e.g. an op returns before it was
    /// invoked).
    MalformedHistory,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::SearchBudgetExhausted => "search budget exhausted",
            ViolationKind::MalformedHistory => "malformed history",
        })
    }
}

/// A failed check: the offending key and a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What went wrong.
    pub kind: ViolationKind,
    /// The key whose sub-history failed.
    pub key: String,
    /// Multi-line explanation: op counts, the longest linearizable prefix
    /// found, why the search got stuck after it, and the key's ops in call
    /// order with times (windowed around the problem for long histories).
    pub explanation: String,
    /// All ops of the key (including ignored timed-out reads), in call order.
    pub ops: Vec<Op>,
    /// Longest linearizable prefix found, as indices into [`Violation::ops`]
    /// in linearization order (empty for [`ViolationKind::MalformedHistory`]).
    pub longest_prefix: Vec<usize>,
    /// Number of search states explored for this key.
    pub states_explored: usize,
}

impl Violation {
    /// True if the result is inconclusive because the search budget ran out.
    #[must_use]
    pub fn is_budget_exhausted(&self) -> bool {
        self.kind == ViolationKind::SearchBudgetExhausted
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "linearizability check failed for key {:?}: {}",
            self.key, self.kind
        )?;
        f.write_str(&self.explanation)
    }
}

impl std::error::Error for Violation {}

/// Options for [`check_with_options`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Initial value of keys present in this map; all other keys start absent.
    pub initial: HashMap<String, String>,
    /// Bound on the number of search states explored per key.
    pub max_states_per_key: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            initial: HashMap::new(),
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        }
    }
}

/// Checks that `history` is linearizable, with every key initially absent and
/// the default search budget ([`DEFAULT_MAX_STATES_PER_KEY`]).
///
/// # Errors
///
/// Returns a [`Violation`] naming the first key (in lexicographic order) whose
/// sub-history is not linearizable or malformed, or, if there is none, the
/// first key whose search budget ran out.
pub fn check(history: &[Op]) -> Result<CheckStats, Violation> {
    check_with_options(history, &CheckOptions::default())
}

/// Like [`check`], but explores at most `max_states_per_key` search states
/// per key before giving up with [`ViolationKind::SearchBudgetExhausted`].
///
/// # Errors
///
/// Returns a [`Violation`] naming the first key (in lexicographic order) whose
/// sub-history is not linearizable or malformed, or, if there is none, the
/// first key whose search budget ran out.
pub fn check_with_limit(
    history: &[Op],
    max_states_per_key: usize,
) -> Result<CheckStats, Violation> {
    check_with_options(
        history,
        &CheckOptions {
            initial: HashMap::new(),
            max_states_per_key,
        },
    )
}

/// Like [`check`], but keys in `initial` start with the given value.
///
/// # Errors
///
/// Returns a [`Violation`] naming the first key (in lexicographic order) whose
/// sub-history is not linearizable or malformed, or, if there is none, the
/// first key whose search budget ran out.
pub fn check_with_initial(
    history: &[Op],
    initial: &HashMap<String, String>,
) -> Result<CheckStats, Violation> {
    check_with_options(
        history,
        &CheckOptions {
            initial: initial.clone(),
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        },
    )
}

/// Checks `history` with explicit options.
///
/// Keys are checked in lexicographic order. A definite violation
/// ([`ViolationKind::NotLinearizable`] or [`ViolationKind::MalformedHistory`])
/// is returned as soon as it is found; an exhausted search budget on some key
/// is only reported if no other key is definitely violating.
///
/// # Errors
///
/// Returns a [`Violation`] naming the first key (in lexicographic order) whose
/// sub-history is not linearizable or malformed, or, if there is none, the
/// first key whose search budget ran out.
pub fn check_with_options(history: &[Op], options: &CheckOptions) -> Result<CheckStats, Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }

    let mut stats = CheckStats::default();
    let mut inconclusive: Option<Violation> = None;
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.call); // stable: ties keep history order
        if let Some(bad) = ops
            .iter()
            .position(|op| op.ret.is_some_and(|r| r < op.call))
        {
            return Err(malformed(key, &ops, bad));
        }
        let prepared = Prepared::new(ops, options.initial.get(key).map(String::as_str));
        let mut search = Search::new(&prepared, options.max_states_per_key);
        let outcome = search.run();

        stats.keys_checked += 1;
        stats.completed_ops += prepared.comp_call.len();
        stats.unknown_writes += prepared.opt_call.len();
        stats.ops_checked += prepared.comp_call.len() + prepared.opt_call.len();
        stats.ignored_reads += prepared.ignored_reads;
        stats.states_explored += search.explored;
        stats.max_states_for_a_key = stats.max_states_for_a_key.max(search.explored);

        match outcome {
            Outcome::Linearizable => {}
            Outcome::NotLinearizable => {
                return Err(build_violation(
                    ViolationKind::NotLinearizable,
                    key,
                    &prepared,
                    &search,
                ));
            }
            Outcome::BudgetExhausted => {
                if inconclusive.is_none() {
                    inconclusive = Some(build_violation(
                        ViolationKind::SearchBudgetExhausted,
                        key,
                        &prepared,
                        &search,
                    ));
                }
            }
        }
    }
    match inconclusive {
        Some(v) => Err(v),
        None => Ok(stats),
    }
}

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

/// Small, fast, non-cryptographic hasher for memo keys (`FxHash`-style
/// mixing with a final avalanche).
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(buf));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // Final avalanche (murmur3 fmix64): the multiply above only moves
        // entropy upwards, and the bitset words differ mostly in high bits.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type Memo = HashSet<Box<[u64]>, BuildHasherDefault<FxHasher>>;

#[inline]
fn bit_get(words: &[u64], i: usize) -> bool {
    words[i / 64] & (1u64 << (i % 64)) != 0
}

#[inline]
fn bit_set(words: &mut [u64], i: usize) {
    words[i / 64] |= 1u64 << (i % 64);
}

#[inline]
fn bit_clear(words: &mut [u64], i: usize) {
    words[i / 64] &= !(1u64 << (i % 64));
}

/// Value id of absent (`None`), when some read observes absence.
const ABSENT: u32 = 0;
/// Value id shared by every value that no completed read observes. Such
/// values are indistinguishable to the search (a read never matches them), so
/// merging them shrinks the memo without changing the answer.
const UNOBSERVED: u32 = 1;

/// A completed op's effect, with values interned to ids (see [`ABSENT`],
/// [`UNOBSERVED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write(u32),
    Read(u32),
}

/// One key's sub-history in a search-friendly form.
struct Prepared<'h> {
    /// All ops of the key, in call order (including ignored reads).
    ops: Vec<&'h Op>,
    /// Interned values, indexed by id (the entry for [`UNOBSERVED`] is a
    /// placeholder).
    values: Vec<Option<String>>,
    /// Initial register value id.
    init: u32,
    /// Initial register value.
    init_value: Option<String>,
    /// Completed ops, in call order.
    comp_call: Vec<u64>,
    comp_ret: Vec<u64>,
    comp_kind: Vec<Kind>,
    /// Index into `ops` of each completed op.
    comp_src: Vec<usize>,
    /// Unknown-outcome ("optional") writes, in call order.
    opt_call: Vec<u64>,
    opt_val: Vec<u32>,
    /// Index into `ops` of each optional write.
    opt_src: Vec<usize>,
    /// For each value id, the optional writes of that value, in call order.
    opt_by_val: Vec<Vec<usize>>,
    /// For each value id, the number of writes (completed or optional).
    writes_per_val: Vec<u32>,
    /// For each value id, the number of completed reads observing it.
    reads_per_val: Vec<u32>,
    /// Completed ops other than writes of unobserved values; the search
    /// succeeds once all of these are linearized.
    n_required: usize,
    /// Number of reads with unknown outcome (ignored).
    ignored_reads: usize,
}

impl<'h> Prepared<'h> {
    fn new(ops: Vec<&'h Op>, init: Option<&str>) -> Self {
        let observed: HashSet<&Option<String>> = ops
            .iter()
            .filter(|op| op.ret.is_some())
            .filter_map(|op| match &op.kind {
                OpKind::Read(v) => Some(v),
                OpKind::Write(_) => None,
            })
            .collect();
        let mut interner: HashMap<Option<String>, u32> = HashMap::new();
        interner.insert(None, ABSENT);
        let mut values: Vec<Option<String>> = vec![None, None];
        let mut intern = |v: &Option<String>| -> u32 {
            if !observed.contains(v) {
                return UNOBSERVED;
            }
            if let Some(&id) = interner.get(v) {
                return id;
            }
            let id = u32::try_from(values.len()).expect("fewer than 2^32 distinct values per key");
            interner.insert(v.clone(), id);
            values.push(v.clone());
            id
        };
        let init_value = init.map(str::to_owned);
        let init = intern(&init_value);

        let mut p_comp_call = Vec::new();
        let mut p_comp_ret = Vec::new();
        let mut p_comp_kind = Vec::new();
        let mut p_comp_src = Vec::new();
        let mut p_opt_call = Vec::new();
        let mut p_opt_val = Vec::new();
        let mut p_opt_src = Vec::new();
        let mut ignored_reads = 0;
        for (idx, op) in ops.iter().enumerate() {
            match (&op.kind, op.ret) {
                (OpKind::Read(_), None) => ignored_reads += 1,
                (OpKind::Read(v), Some(ret)) => {
                    p_comp_call.push(op.call);
                    p_comp_ret.push(ret);
                    p_comp_kind.push(Kind::Read(intern(v)));
                    p_comp_src.push(idx);
                }
                (OpKind::Write(v), Some(ret)) => {
                    p_comp_call.push(op.call);
                    p_comp_ret.push(ret);
                    p_comp_kind.push(Kind::Write(intern(v)));
                    p_comp_src.push(idx);
                }
                (OpKind::Write(v), None) => {
                    p_opt_call.push(op.call);
                    p_opt_val.push(intern(v));
                    p_opt_src.push(idx);
                }
            }
        }

        let mut opt_by_val = vec![Vec::new(); values.len()];
        let mut writes_per_val = vec![0u32; values.len()];
        for (w, &v) in p_opt_val.iter().enumerate() {
            opt_by_val[v as usize].push(w);
            writes_per_val[v as usize] += 1;
        }
        let mut reads_per_val = vec![0u32; values.len()];
        let mut n_required = 0;
        for k in &p_comp_kind {
            match *k {
                Kind::Write(v) => writes_per_val[v as usize] += 1,
                Kind::Read(v) => reads_per_val[v as usize] += 1,
            }
            if *k != Kind::Write(UNOBSERVED) {
                n_required += 1;
            }
        }

        Prepared {
            ops,
            values,
            init,
            init_value,
            comp_call: p_comp_call,
            comp_ret: p_comp_ret,
            comp_kind: p_comp_kind,
            comp_src: p_comp_src,
            opt_call: p_opt_call,
            opt_val: p_opt_val,
            opt_src: p_opt_src,
            opt_by_val,
            writes_per_val,
            reads_per_val,
            n_required,
            ignored_reads,
        }
    }

    fn value(&self, id: u32) -> Option<&str> {
        self.values[id as usize].as_deref()
    }
}

/// One step of the search. Every move of a frame is preceded by that frame's
/// absorbed writes (see [`Search::moves`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    /// Linearize completed op `i` (a read, or a write of an observed value).
    Op(usize),
    /// Linearize optional write `w`, immediately followed by completed read `r`
    /// observing its value.
    OptThenRead(usize, usize),
}

impl Move {
    fn completed_index(self) -> usize {
        match self {
            Move::Op(i) | Move::OptThenRead(_, i) => i,
        }
    }
}

/// A single linearized op, for recording paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Completed(usize),
    Optional(usize),
}

fn steps_of(absorb: &[usize], mv: Move) -> impl Iterator<Item = Step> + '_ {
    let main: [Option<Step>; 2] = match mv {
        Move::Op(i) => [Some(Step::Completed(i)), None],
        Move::OptThenRead(w, r) => [Some(Step::Optional(w)), Some(Step::Completed(r))],
    };
    absorb
        .iter()
        .map(|&j| Step::Completed(j))
        .chain(main.into_iter().flatten())
}

struct Frame {
    moves: Vec<Move>,
    next: usize,
    /// Completed writes of unobserved values, placed immediately before
    /// whichever move of this frame is taken.
    absorb: Vec<usize>,
    /// One past the highest index in `absorb` (0 if empty).
    absorb_hi: usize,
    /// Index of the first not-yet-linearized completed op.
    lo: usize,
    /// One past the highest linearized completed op index (0 if none).
    hi: usize,
    state: u32,
    /// Number of required completed ops linearized.
    depth: usize,
    /// The move (taken from the parent frame) that led to this frame.
    via: Option<Move>,
}

enum Outcome {
    Linearizable,
    NotLinearizable,
    BudgetExhausted,
}

struct Search<'p, 'h> {
    p: &'p Prepared<'h>,
    lin: Vec<u64>,
    opt_used: Vec<u64>,
    /// For each value id, writes of that value not yet linearized/used.
    remaining: Vec<u32>,
    /// For each value id, completed reads of that value not yet linearized.
    unplaced_reads: Vec<u32>,
    visited: Memo,
    explored: usize,
    limit: usize,
    best_depth: usize,
    best_path: Vec<Step>,
}

impl<'p, 'h> Search<'p, 'h> {
    fn new(p: &'p Prepared<'h>, limit: usize) -> Self {
        Search {
            p,
            lin: vec![0; p.comp_call.len().div_ceil(64)],
            opt_used: vec![0; p.opt_call.len().div_ceil(64)],
            remaining: p.writes_per_val.clone(),
            unplaced_reads: p.reads_per_val.clone(),
            visited: Memo::default(),
            explored: 0,
            limit,
            best_depth: 0,
            best_path: Vec::new(),
        }
    }

    fn place(&mut self, step: Step, state: u32) -> u32 {
        match step {
            Step::Completed(i) => {
                bit_set(&mut self.lin, i);
                match self.p.comp_kind[i] {
                    Kind::Write(v) => {
                        self.remaining[v as usize] -= 1;
                        v
                    }
                    Kind::Read(v) => {
                        self.unplaced_reads[v as usize] -= 1;
                        state
                    }
                }
            }
            Step::Optional(w) => {
                bit_set(&mut self.opt_used, w);
                let v = self.p.opt_val[w];
                self.remaining[v as usize] -= 1;
                v
            }
        }
    }

    fn unplace(&mut self, step: Step) {
        match step {
            Step::Completed(i) => {
                bit_clear(&mut self.lin, i);
                match self.p.comp_kind[i] {
                    Kind::Write(v) => self.remaining[v as usize] += 1,
                    Kind::Read(v) => self.unplaced_reads[v as usize] += 1,
                }
            }
            Step::Optional(w) => {
                bit_clear(&mut self.opt_used, w);
                self.remaining[self.p.opt_val[w] as usize] += 1;
            }
        }
    }

    fn apply_move(&mut self, absorb: &[usize], mv: Move, mut state: u32) -> u32 {
        for step in steps_of(absorb, mv) {
            state = self.place(step, state);
        }
        state
    }

    fn undo_move(&mut self, absorb: &[usize], mv: Move) {
        for step in steps_of(absorb, mv) {
            self.unplace(step);
        }
    }

    /// Completed ops that may be linearized next (those invoked no later than
    /// the earliest return among pending completed ops), and that earliest
    /// return time.
    fn candidates(&self, lo: usize) -> (Vec<usize>, u64) {
        let p = self.p;
        let n = p.comp_call.len();
        let mut min_ret = u64::MAX;
        let mut cands = Vec::new();
        let mut i = lo;
        // Ops are sorted by call; an op invoked after the running minimum
        // return cannot lower that minimum (its ret >= its call).
        while i < n && p.comp_call[i] <= min_ret {
            if !bit_get(&self.lin, i) {
                min_ret = min_ret.min(p.comp_ret[i]);
                cands.push(i);
            }
            i += 1;
        }
        cands.retain(|&c| p.comp_call[c] <= min_ret);
        (cands, min_ret)
    }

    /// First unused optional write of value `v` invoked no later than `min_ret`.
    fn eligible_optional(&self, v: u32, min_ret: u64) -> Option<usize> {
        for &w in &self.p.opt_by_val[v as usize] {
            if self.p.opt_call[w] > min_ret {
                break;
            }
            if !bit_get(&self.opt_used, w) {
                return Some(w);
            }
        }
        None
    }

    /// Whether value `v` is needed by a pending read but can never be the
    /// register's value again.
    fn starved(&self, v: u32, state: u32) -> bool {
        v != state && self.unplaced_reads[v as usize] > 0 && self.remaining[v as usize] == 0
    }

    /// Some pending read in `cands` can never be satisfied.
    fn starved_candidate(&self, cands: &[usize], state: u32) -> bool {
        cands.iter().any(|&c| match self.p.comp_kind[c] {
            Kind::Read(v) => self.starved(v, state),
            Kind::Write(_) => false,
        })
    }

    /// Moves from the configuration (current bitsets, `state`), reached by a
    /// move that changed the register from `prev` to `state`. Returns the
    /// moves and the writes to absorb before each of them. An empty move list
    /// means the configuration is dead.
    ///
    /// Writes of unobserved values ("junk" writes) are never moves on their
    /// own: in any linearization such a write is followed by another write
    /// (or by nothing), and placing more of them earlier never hurts (the
    /// extra ones can be deleted from any completion). So before every write
    /// move, all junk writes that may be placed are absorbed (to a fixpoint,
    /// as absorbing one can enable others). Once every other completed op is
    /// linearized, leftover junk writes go at the end.
    fn moves(&mut self, lo: usize, state: u32, prev: u32) -> (Vec<Move>, Vec<usize>) {
        let p = self.p;
        // The last move overwrote a value that a pending read still needs and
        // that no remaining write can restore.
        if self.starved(prev, state) {
            return (Vec::new(), Vec::new());
        }
        let (mut cands, mut min_ret) = self.candidates(lo);
        if self.starved_candidate(&cands, state) {
            return (Vec::new(), Vec::new());
        }
        // Greedy: a read consistent with the current value can always go next
        // (moving such a read earlier never invalidates a linearization).
        for &c in &cands {
            if p.comp_kind[c] == Kind::Read(state) {
                return (vec![Move::Op(c)], Vec::new());
            }
        }

        let mut absorb = Vec::new();
        loop {
            let before = absorb.len();
            for &c in &cands {
                if p.comp_kind[c] == Kind::Write(UNOBSERVED) {
                    bit_set(&mut self.lin, c);
                    absorb.push(c);
                }
            }
            if absorb.len() == before {
                break;
            }
            (cands, min_ret) = self.candidates(lo);
        }

        let mut moves = Vec::new();
        if !self.starved_candidate(&cands, state) {
            // Values wanted by pending reads, with one read observing each.
            let mut wanted: Vec<(u32, usize)> = Vec::new();
            for &c in &cands {
                if let Kind::Read(v) = p.comp_kind[c] {
                    if !wanted.iter().any(|&(w, _)| w == v) {
                        wanted.push((v, c));
                    }
                }
            }
            let mut others = Vec::new();
            for &c in &cands {
                if let Kind::Write(v) = p.comp_kind[c] {
                    if wanted.iter().any(|&(w, _)| w == v) {
                        moves.push(Move::Op(c));
                    } else {
                        others.push(Move::Op(c));
                    }
                }
            }
            for &(v, r) in &wanted {
                if let Some(w) = self.eligible_optional(v, min_ret) {
                    moves.push(Move::OptThenRead(w, r));
                }
            }
            moves.extend(others);
        }
        for &j in &absorb {
            bit_clear(&mut self.lin, j);
        }
        if moves.is_empty() {
            absorb.clear();
        }
        (moves, absorb)
    }

    /// Writes the memo key of the current configuration into `key`.
    fn memo_key(&self, state: u32, lo: usize, hi: usize, key: &mut Vec<u64>) {
        // Bits below `lo` are all set and bits at or above `hi` all clear, so
        // (lo, words covering [lo, hi)) identifies the set canonically.
        let seg: &[u64] = if hi > lo {
            &self.lin[lo / 64..=(hi - 1) / 64]
        } else {
            &[]
        };
        let opt_len = self
            .opt_used
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1);
        key.clear();
        key.push(u64::from(state));
        key.push(lo as u64);
        key.push(seg.len() as u64);
        key.extend_from_slice(seg);
        key.extend_from_slice(&self.opt_used[..opt_len]);
    }

    fn snapshot_if_deeper(&mut self, stack: &[Frame]) {
        if let Some(top) = stack.last() {
            if top.depth > self.best_depth {
                self.best_depth = top.depth;
                self.best_path = stack
                    .windows(2)
                    .filter_map(|pair| pair[1].via.map(|mv| (&pair[0].absorb, mv)))
                    .flat_map(|(absorb, mv)| steps_of(absorb, mv))
                    .collect();
            }
        }
    }

    fn new_frame(
        &mut self,
        lo: usize,
        hi: usize,
        state: u32,
        prev: u32,
        depth: usize,
        via: Option<Move>,
    ) -> Frame {
        let (moves, absorb) = self.moves(lo, state, prev);
        let absorb_hi = absorb.iter().max().map_or(0, |&j| j + 1);
        Frame {
            moves,
            next: 0,
            absorb,
            absorb_hi,
            lo,
            hi,
            state,
            depth,
            via,
        }
    }

    fn run(&mut self) -> Outcome {
        let n = self.p.comp_call.len();
        let required = self.p.n_required;
        if required == 0 {
            return Outcome::Linearizable;
        }
        let init = self.p.init;
        // A read of a value that is never written (and is not the initial
        // value) can never be satisfied.
        let hopeless =
            (0..self.p.values.len()).any(|v| u32::try_from(v).is_ok_and(|v| self.starved(v, init)));
        let root = if hopeless {
            Frame {
                moves: Vec::new(),
                next: 0,
                absorb: Vec::new(),
                absorb_hi: 0,
                lo: 0,
                hi: 0,
                state: init,
                depth: 0,
                via: None,
            }
        } else {
            self.new_frame(0, 0, init, init, 0, None)
        };
        let mut stack = vec![root];
        let mut key: Vec<u64> = Vec::new();
        self.explored = 1;

        while let Some(top) = stack.last_mut() {
            if top.next == top.moves.len() {
                // Exhausted: backtrack.
                self.snapshot_if_deeper(&stack);
                let frame = stack.pop().expect("stack is non-empty inside the loop");
                if let Some(mv) = frame.via {
                    let parent = stack.last().expect("a non-root frame has a parent");
                    self.undo_move(&parent.absorb, mv);
                }
                continue;
            }
            let mv = top.moves[top.next];
            top.next += 1;
            let (lo0, hi0, state0, depth0) = (top.lo, top.hi, top.state, top.depth);

            let state = self.apply_move(&top.absorb, mv, state0);
            let depth = depth0 + 1;
            if depth == required {
                // Every required op is linearized; leftover junk writes go at
                // the end and unplaced optional writes never took effect.
                return Outcome::Linearizable;
            }
            let mut lo = lo0;
            while lo < n && bit_get(&self.lin, lo) {
                lo += 1;
            }
            let hi = hi0.max(top.absorb_hi).max(mv.completed_index() + 1);
            self.memo_key(state, lo, hi, &mut key);
            if self.visited.contains(key.as_slice()) {
                self.undo_move(&top.absorb, mv);
                continue;
            }
            self.visited.insert(key.as_slice().into());
            self.explored += 1;
            let frame = self.new_frame(lo, hi, state, state0, depth, Some(mv));
            stack.push(frame);
            if self.explored >= self.limit {
                self.snapshot_if_deeper(&stack);
                return Outcome::BudgetExhausted;
            }
        }
        Outcome::NotLinearizable
    }
}

fn malformed(key: &str, ops: &[&Op], bad: usize) -> Violation {
    let op = ops[bad];
    let mut explanation =
        format!("op #{bad} returns before it is invoked: {op}\nOps in call order:\n");
    for (i, op) in ops.iter().enumerate() {
        let _ = writeln!(explanation, "  #{i:<5} {op}");
    }
    Violation {
        kind: ViolationKind::MalformedHistory,
        key: key.to_owned(),
        explanation,
        ops: ops.iter().map(|&op| op.clone()).collect(),
        longest_prefix: Vec::new(),
        states_explored: 0,
    }
}

fn build_violation(
    kind: ViolationKind,
    key: &str,
    p: &Prepared<'_>,
    search: &Search<'_, '_>,
) -> Violation {
    const WINDOW_PAD: usize = 15;
    const FULL_LISTING_MAX: usize = 80;
    const PREFIX_TAIL: usize = 12;

    // Replay the longest prefix on a fresh search to recover its configuration.
    let mut replay = Search::new(p, 0);
    let mut state = p.init;
    let mut steps: Vec<Step> = search.best_path.clone();
    for &step in &steps {
        state = replay.place(step, state);
    }
    let n = p.comp_call.len();
    let first_pending = |replay: &Search<'_, '_>| {
        let mut lo = 0;
        while lo < n && bit_get(&replay.lin, lo) {
            lo += 1;
        }
        lo
    };
    let (mut cands, mut min_ret) = replay.candidates(first_pending(&replay));
    // The search places writes of unobserved values lazily; show the ones that
    // are forced at this point as part of the prefix, which makes the
    // conflict visible (e.g. the write that overwrote a value a read needs).
    if !cands.iter().any(|&c| p.comp_kind[c] == Kind::Read(state)) {
        loop {
            let junk: Vec<usize> = cands
                .iter()
                .copied()
                .filter(|&c| p.comp_kind[c] == Kind::Write(UNOBSERVED))
                .collect();
            if junk.is_empty() {
                break;
            }
            for j in junk {
                state = replay.place(Step::Completed(j), state);
                steps.push(Step::Completed(j));
            }
            (cands, min_ret) = replay.candidates(first_pending(&replay));
        }
    }
    let prefix: Vec<usize> = steps
        .iter()
        .map(|&step| match step {
            Step::Completed(i) => p.comp_src[i],
            Step::Optional(w) => p.opt_src[w],
        })
        .collect();
    // The actual register value after the prefix (the search state may be the
    // merged UNOBSERVED id).
    let holds_value: Option<&str> = prefix
        .iter()
        .rev()
        .find_map(|&i| match &p.ops[i].kind {
            OpKind::Write(v) => Some(v.as_deref()),
            OpKind::Read(_) => None,
        })
        .unwrap_or(p.init_value.as_deref());
    let holds = fmt_value(holds_value);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ops on this key: {} completed, {} writes with unknown outcome, {} timed-out reads ignored; {} search states explored.",
        p.ops.len(),
        n,
        p.opt_call.len(),
        p.ignored_reads,
        search.explored
    );
    match kind {
        ViolationKind::SearchBudgetExhausted => {
            let _ = writeln!(
                out,
                "The search budget of {} states was exhausted before a linearization was found or ruled out; the result is INCONCLUSIVE (raise it with check_with_limit).",
                search.limit
            );
        }
        _ => {
            let _ = writeln!(out, "No linearization of this key's history exists.");
        }
    }
    let placed_completed = steps
        .iter()
        .filter(|s| matches!(s, Step::Completed(_)))
        .count();
    let _ = writeln!(
        out,
        "Longest linearizable prefix found: {} of {} completed ops (plus {} unknown-outcome writes taking effect); register value after it: {}.",
        placed_completed,
        n,
        steps.len() - placed_completed,
        holds
    );

    // Why a read of `v` cannot come next / at all.
    let read_problem = |v: u32| -> Option<String> {
        let observed = fmt_value(p.value(v));
        if p.writes_per_val[v as usize] == 0 && v != p.init {
            Some(format!(
                "observes {observed}, which is never written to this key (and is not its initial value)"
            ))
        } else if v == state {
            None
        } else if replay.remaining[v as usize] == 0 {
            Some(format!(
                "observes {observed}, but the register holds {holds} and every write of {observed} is already in the prefix (the value was overwritten)"
            ))
        } else {
            let pending: Vec<String> = p
                .comp_kind
                .iter()
                .enumerate()
                .filter(|&(i, k)| *k == Kind::Write(v) && !bit_get(&replay.lin, i))
                .map(|(i, _)| format!("#{}", p.comp_src[i]))
                .chain(
                    p.opt_by_val[v as usize]
                        .iter()
                        .filter(|&&w| !bit_get(&replay.opt_used, w))
                        .map(|&w| format!("#{}", p.opt_src[w])),
                )
                .take(6)
                .collect();
            Some(format!(
                "observes {observed}, but the register holds {holds}; the remaining write(s) of {observed} ({}) cannot be ordered before this read",
                pending.join(", ")
            ))
        }
    };

    let starved: Vec<usize> = (0..n)
        .filter(|&i| !bit_get(&replay.lin, i) && !cands.contains(&i))
        .filter(|&i| match p.comp_kind[i] {
            Kind::Read(v) => replay.starved(v, state),
            Kind::Write(_) => false,
        })
        .collect();
    if !starved.is_empty() {
        let _ = writeln!(
            out,
            "Pending reads that can no longer be satisfied after that prefix ({} in total; this is why the search cannot extend it):",
            starved.len()
        );
        for &i in starved.iter().take(5) {
            if let Kind::Read(v) = p.comp_kind[i] {
                let why = read_problem(v).unwrap_or_default();
                let _ = writeln!(out, "  #{} {}: {why}", p.comp_src[i], p.ops[p.comp_src[i]]);
            }
        }
        // The writes of the observed and of the held value, with their
        // intervals: the real-time order that rules the read out.
        let mut shown: Vec<Option<&str>> = vec![holds_value];
        for &i in starved.iter().take(5) {
            if let Kind::Read(v) = p.comp_kind[i] {
                shown.push(p.value(v));
            }
        }
        shown.dedup();
        let _ = writeln!(out, "Writes of those values:");
        for v in shown {
            for (i, op) in p.ops.iter().enumerate() {
                if matches!(&op.kind, OpKind::Write(w) if w.as_deref() == v) {
                    let _ = writeln!(out, "  #{i} {op}");
                }
            }
        }
    }

    let cand_src: Vec<usize> = cands.iter().map(|&c| p.comp_src[c]).collect();
    if !cands.is_empty() {
        let first_ret = cands
            .iter()
            .copied()
            .min_by_key(|&c| p.comp_ret[c])
            .map_or(0, |c| p.comp_src[c]);
        let _ = writeln!(
            out,
            "After that prefix, pending op #{first_ret} returns at {min_ret}, so only pending ops invoked at or before {min_ret} may come next:"
        );
        for &c in &cands {
            let op = p.ops[p.comp_src[c]];
            let why = match p.comp_kind[c] {
                Kind::Write(UNOBSERVED) => {
                    "writes a value no read observes; could be placed next".to_owned()
                }
                Kind::Write(_) => "could be placed next".to_owned(),
                Kind::Read(v) => read_problem(v).unwrap_or_else(|| {
                    "could be placed next (observes the current value)".to_owned()
                }),
            };
            let _ = writeln!(out, "  #{} {op}: {why}", p.comp_src[c]);
        }
    }
    if !prefix.is_empty() {
        let skip = prefix.len().saturating_sub(PREFIX_TAIL);
        let _ = writeln!(
            out,
            "Prefix in linearization order{}:",
            if skip > 0 {
                format!(" (last {} of {})", prefix.len() - skip, prefix.len())
            } else {
                String::new()
            }
        );
        for (pos, &i) in prefix.iter().enumerate().skip(skip) {
            let _ = writeln!(out, "  L{:<5} #{i:<5} {}", pos + 1, p.ops[i]);
        }
    }

    // Listing of the key's ops in call order, windowed for long histories.
    let mut position: Vec<Option<usize>> = vec![None; p.ops.len()];
    for (pos, &i) in prefix.iter().enumerate() {
        position[i] = Some(pos + 1);
    }
    let (from, to) = if p.ops.len() <= FULL_LISTING_MAX || cand_src.is_empty() {
        (0, p.ops.len())
    } else {
        let lo_src = cand_src.iter().copied().min().unwrap_or(0);
        let hi_src = cand_src.iter().copied().max().unwrap_or(0);
        (
            lo_src.saturating_sub(WINDOW_PAD),
            (hi_src + WINDOW_PAD + 1).min(p.ops.len()),
        )
    };
    let _ = writeln!(
        out,
        "Ops in call order{} (Ln = position in the prefix, -- = completed but not placed, ?? = unknown-outcome write not placed, ig = ignored timed-out read, >> = may come next):",
        if from > 0 || to < p.ops.len() {
            format!(" #{from}..#{} of {}", to - 1, p.ops.len())
        } else {
            String::new()
        }
    );
    for (i, op) in p.ops.iter().enumerate().take(to).skip(from) {
        let mark = match position[i] {
            Some(pos) => format!("L{pos}"),
            None if cand_src.contains(&i) => ">>".to_owned(),
            None => match (&op.kind, op.ret) {
                (OpKind::Read(_), None) => "ig".to_owned(),
                (OpKind::Write(_), None) => "??".to_owned(),
                _ => "--".to_owned(),
            },
        };
        let _ = writeln!(out, "  {mark:<6} #{i:<5} {op}");
    }

    Violation {
        kind,
        key: key.to_owned(),
        explanation: out,
        ops: p.ops.iter().map(|&op| op.clone()).collect(),
        longest_prefix: prefix,
        states_explored: search.explored,
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: u64, k: &str, v: &str, call: u64, ret: u64) -> Op {
        Op::write(c, k, v, call, Some(ret))
    }
    fn w_unknown(c: u64, k: &str, v: &str, call: u64) -> Op {
        Op::write(c, k, v, call, None)
    }
    fn del(c: u64, k: &str, call: u64, ret: u64) -> Op {
        Op::delete(c, k, call, Some(ret))
    }
    fn r(c: u64, k: &str, v: Option<&str>, call: u64, ret: u64) -> Op {
        Op::read(c, k, v, call, Some(ret))
    }

    fn assert_ok(h: &[Op]) -> CheckStats {
        match check(h) {
            Ok(s) => s,
            Err(v) => panic!("expected linearizable, got:\n{v}"),
        }
    }

    fn assert_violation(h: &[Op], key: &str) -> Violation {
        match check(h) {
            Ok(s) => panic!("expected a violation on {key:?}, but check passed: {s}"),
            Err(v) => {
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
                assert_eq!(v.key, key, "{v}");
                v
            }
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        let s = assert_ok(&[]);
        assert_eq!(s.keys_checked, 0);
        assert_eq!(s.ops_checked, 0);
    }

    #[test]
    fn sequential_valid_history() {
        let h = vec![
            r(1, "k", None, 0, 5),
            w(1, "k", "a", 10, 20),
            r(2, "k", Some("a"), 30, 40),
            w(2, "k", "b", 50, 60),
            r(1, "k", Some("b"), 70, 80),
            r(3, "k", Some("b"), 90, 100),
            w(3, "k", "c", 110, 120),
            r(1, "k", Some("c"), 130, 140),
        ];
        let s = assert_ok(&h);
        assert_eq!(s.keys_checked, 1);
        assert_eq!(s.ops_checked, 8);
        assert_eq!(s.completed_ops, 8);
    }

    #[test]
    fn concurrent_writes_read_sees_either_value() {
        for seen in ["a", "b"] {
            let h = vec![
                w(1, "k", "a", 0, 100),
                w(2, "k", "b", 10, 90),
                r(3, "k", Some(seen), 20, 80),
            ];
            assert_ok(&h);
            // Also when the read starts after both writes completed.
            let h2 = vec![
                w(1, "k", "a", 0, 100),
                w(2, "k", "b", 10, 90),
                r(3, "k", Some(seen), 200, 210),
                r(3, "k", Some(seen), 220, 230),
            ];
            assert_ok(&h2);
        }
    }

    #[test]
    fn concurrent_writes_reads_must_agree_on_final_value() {
        // Once both writes have completed, two sequential reads cannot
        // observe a then b (that would need a write between them).
        let h = vec![
            w(1, "k", "a", 0, 100),
            w(2, "k", "b", 10, 90),
            r(3, "k", Some("a"), 200, 210),
            r(3, "k", Some("b"), 220, 230),
        ];
        assert_violation(&h, "k");
    }

    #[test]
    fn read_may_see_value_of_concurrent_write_in_flight() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w(2, "k", "b", 20, 100),
            r(3, "k", Some("b"), 30, 40),
            r(4, "k", Some("a"), 25, 35), // concurrent with the write of b
            r(3, "k", Some("b"), 50, 60),
        ];
        assert_ok(&h);
    }

    #[test]
    fn stale_read_after_completed_write_is_violation() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w(1, "k", "b", 20, 30),
            r(2, "k", Some("a"), 40, 50),
        ];
        let v = assert_violation(&h, "k");
        assert!(v.explanation.contains("overwritten"), "{v}");
        assert!(v.to_string().contains("\"k\""), "{v}");
        // Longest prefix: write a, write b (2 ops).
        assert_eq!(v.longest_prefix, vec![0, 1], "{v}");
        assert!(
            v.explanation.contains("register value after it: \"b\""),
            "{v}"
        );
    }

    #[test]
    fn read_of_value_never_written_is_violation() {
        let h = vec![w(1, "k", "a", 0, 10), r(2, "k", Some("zzz"), 20, 30)];
        let v = assert_violation(&h, "k");
        assert!(v.explanation.contains("never written"), "{v}");
        // Even when the read is concurrent with everything.
        let h = vec![w(1, "k", "a", 0, 100), r(2, "k", Some("zzz"), 0, 100)];
        assert_violation(&h, "k");
    }

    #[test]
    fn initial_value_is_absent() {
        assert_ok(&[r(1, "k", None, 0, 1)]);
        assert_violation(&[r(1, "k", Some(""), 0, 1)], "k");
    }

    #[test]
    fn timed_out_write_later_read_is_valid() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w_unknown(2, "k", "b", 20),
            r(3, "k", Some("a"), 25, 30),       // not yet applied
            r(3, "k", Some("b"), 1_000, 1_010), // applied much later
            r(1, "k", Some("b"), 2_000, 2_010),
        ];
        let s = assert_ok(&h);
        assert_eq!(s.unknown_writes, 1);
        assert_eq!(s.ops_checked, 5);
    }

    #[test]
    fn timed_out_write_never_observed_is_valid() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w_unknown(2, "k", "b", 20),
            r(3, "k", Some("a"), 30, 40),
            r(3, "k", Some("a"), 1_000, 1_010),
            w(1, "k", "c", 2_000, 2_010),
            r(3, "k", Some("c"), 3_000, 3_010),
        ];
        assert_ok(&h);
        // Several unobserved unknown writes interleaved with a long history.
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..300 {
            h.push(w(1, "k", &format!("v{i}"), t, t + 5));
            h.push(w_unknown(2, "k", &format!("lost{i}"), t + 1));
            h.push(r(3, "k", Some(&format!("v{i}")), t + 6, t + 8));
            t += 10;
        }
        let s = assert_ok(&h);
        assert!(s.max_states_for_a_key < 5_000, "{s}");
    }

    #[test]
    fn timed_out_write_cannot_take_effect_before_its_call() {
        let h = vec![r(1, "k", Some("b"), 0, 50), w_unknown(2, "k", "b", 100)];
        assert_violation(&h, "k");
    }

    #[test]
    fn timed_out_write_observed_then_older_value_is_violation() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w_unknown(2, "k", "b", 20),
            r(3, "k", Some("b"), 30, 40),
            r(3, "k", Some("a"), 50, 60),
        ];
        assert_violation(&h, "k");
    }

    #[test]
    fn timed_out_write_takes_effect_at_most_once() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w_unknown(2, "k", "b", 20),
            r(3, "k", Some("b"), 30, 40),
            w(1, "k", "c", 50, 60),
            r(3, "k", Some("b"), 70, 80),
        ];
        assert_violation(&h, "k");
        // Two unknown writes of the same value may explain two appearances.
        let mut h2 = h.clone();
        h2.push(w_unknown(4, "k", "b", 45));
        assert_ok(&h2);
    }

    #[test]
    fn timed_out_read_is_ignored() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            Op::read(2, "k", Some("garbage"), 20, None),
            r(3, "k", Some("a"), 30, 40),
        ];
        let s = assert_ok(&h);
        assert_eq!(s.ignored_reads, 1);
        assert_eq!(s.ops_checked, 2);
    }

    #[test]
    fn delete_semantics() {
        // put, delete, read absent: valid.
        assert_ok(&[
            w(1, "k", "a", 0, 10),
            del(1, "k", 20, 30),
            r(2, "k", None, 40, 50),
        ]);
        // Read of the deleted value after the delete completed: violation.
        assert_violation(
            &[
                w(1, "k", "a", 0, 10),
                del(1, "k", 20, 30),
                r(2, "k", Some("a"), 40, 50),
            ],
            "k",
        );
        // Read absent after a put completed and before any delete: violation.
        assert_violation(
            &[
                w(1, "k", "a", 0, 10),
                r(2, "k", None, 20, 30),
                del(1, "k", 40, 50),
            ],
            "k",
        );
        // Read concurrent with the delete may see either.
        for seen in [None, Some("a")] {
            assert_ok(&[
                w(1, "k", "a", 0, 10),
                del(1, "k", 20, 40),
                r(2, "k", seen, 25, 35),
            ]);
        }
        // Timed-out delete that is observed, then re-put.
        assert_ok(&[
            w(1, "k", "a", 0, 10),
            Op::delete(2, "k", 20, None),
            r(3, "k", None, 100, 110),
            w(1, "k", "b", 200, 210),
            r(3, "k", Some("b"), 300, 310),
        ]);
        // Absent observed after delete then older value again: violation.
        assert_violation(
            &[
                w(1, "k", "a", 0, 10),
                Op::delete(2, "k", 20, None),
                r(3, "k", None, 100, 110),
                r(3, "k", Some("a"), 200, 210),
            ],
            "k",
        );
    }

    #[test]
    fn multiple_keys_only_one_violating() {
        let h = vec![
            w(1, "a", "1", 0, 10),
            w(2, "b", "1", 0, 10),
            w(3, "c", "1", 0, 10),
            r(1, "a", Some("1"), 20, 30),
            w(2, "b", "2", 20, 30),
            r(3, "c", Some("1"), 20, 30),
            r(1, "b", Some("1"), 40, 50), // stale: b was overwritten with 2
            r(2, "a", Some("1"), 40, 50),
            r(3, "c", Some("1"), 40, 50),
        ];
        let v = assert_violation(&h, "b");
        assert!(v.ops.iter().all(|op| op.key == "b"));
        assert_eq!(v.ops.len(), 3);
        let ok: Vec<Op> = h.iter().filter(|op| op.key != "b").cloned().collect();
        let s = assert_ok(&ok);
        assert_eq!(s.keys_checked, 2);
    }

    #[test]
    fn initial_map_is_respected() {
        let h = vec![r(1, "x", Some("init"), 0, 10), r(1, "y", None, 0, 10)];
        assert_violation(&h, "x");
        let mut init = HashMap::new();
        init.insert("x".to_owned(), "init".to_owned());
        assert!(check_with_initial(&h, &init).is_ok());
        // The initial value can be overwritten and not come back.
        let h2 = vec![w(1, "x", "new", 0, 10), r(1, "x", Some("init"), 20, 30)];
        let v = check_with_initial(&h2, &init).expect_err("stale initial value");
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
    }

    #[test]
    fn equal_timestamps_are_treated_as_overlapping() {
        // The write returns at 10 and the read is invoked at 10: they overlap.
        assert_ok(&[w(1, "k", "a", 0, 10), r(2, "k", None, 10, 20)]);
        // Strictly after: the read must see the write.
        assert_violation(&[w(1, "k", "a", 0, 10), r(2, "k", None, 11, 20)], "k");
    }

    #[test]
    fn malformed_history_is_rejected() {
        let v = check(&[w(1, "k", "a", 10, 5)]).expect_err("ret < call");
        assert_eq!(v.kind, ViolationKind::MalformedHistory);
        assert_eq!(v.key, "k");
    }

    /// `n` sequential (write v_i, read v_i) pairs.
    fn sequential_pairs(key: &str, n: u64) -> Vec<Op> {
        (0..n)
            .flat_map(|i| {
                let v = format!("x{i}");
                [
                    w(1, key, &v, i * 10, i * 10 + 4),
                    r(1, key, Some(&v), i * 10 + 5, i * 10 + 9),
                ]
            })
            .collect()
    }

    #[test]
    fn budget_exhaustion_is_reported_distinctly() {
        // N fully concurrent writes, each observed by a concurrent read, then
        // sequential reads that see two different values: not linearizable,
        // but refuting it requires enumerating ~2^N subsets of the writes.
        let n = 22;
        let mut h: Vec<Op> = (0..n)
            .flat_map(|i| {
                [
                    w(i, "k", &format!("v{i}"), 0, 1_000),
                    r(i + 50, "k", Some(&format!("v{i}")), 0, 1_000),
                ]
            })
            .collect();
        h.push(r(100, "k", Some("v0"), 2_000, 2_010));
        h.push(r(100, "k", Some("v1"), 2_020, 2_030));
        let started = std::time::Instant::now();
        let v = check_with_limit(&h, 20_000).expect_err("budget");
        assert_eq!(v.kind, ViolationKind::SearchBudgetExhausted, "{v}");
        assert!(v.is_budget_exhausted());
        assert!(v.explanation.contains("INCONCLUSIVE"), "{v}");
        assert!(v.states_explored <= 20_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // A small budget on an easy key also trips it.
        let easy = sequential_pairs("e", 25);
        let v = check_with_limit(&easy, 10).expect_err("budget");
        assert_eq!(v.kind, ViolationKind::SearchBudgetExhausted);
        assert!(check_with_limit(&easy, 1_000).is_ok());
    }

    #[test]
    fn definite_violation_takes_precedence_over_budget() {
        let mut h = sequential_pairs("a", 20);
        assert!(check_with_limit(&h, 10).is_err_and(|v| v.is_budget_exhausted()));
        h.push(w(1, "b", "1", 0, 10));
        h.push(w(1, "b", "2", 20, 30));
        h.push(r(1, "b", Some("1"), 40, 50));
        let v = check_with_limit(&h, 10).expect_err("violation");
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
        assert_eq!(v.key, "b");
    }

    #[test]
    fn explanation_is_readable() {
        let h = vec![
            w(1, "k", "a", 0, 10),
            w(1, "k", "b", 20, 30),
            r(2, "k", Some("a"), 40, 50),
            Op::read(3, "k", Some("junk"), 45, None),
            w_unknown(4, "k", "c", 46),
        ];
        let v = assert_violation(&h, "k");
        let text = v.to_string();
        for needle in [
            "linearizability check failed for key \"k\": not linearizable",
            "Longest linearizable prefix found: 2 of 3 completed ops",
            "register value after it: \"b\"",
            "client 2 read \"k\" -> \"a\" [call 40 .. ret 50]",
            "L1",
            ">>",
            "ig",
            "??",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    // --- brute-force cross-check ------------------------------------------------

    /// Reference implementation straight from the definition: try every
    /// order (and every subset of unknown-outcome writes), no pruning.
    fn brute_force(h: &[Op], init: Option<&str>) -> bool {
        let ops: Vec<&Op> = h
            .iter()
            .filter(|op| !(matches!(op.kind, OpKind::Read(_)) && op.ret.is_none()))
            .collect();
        fn go(ops: &[&Op], placed: &mut [bool], state: Option<String>) -> bool {
            if ops
                .iter()
                .zip(placed.iter())
                .all(|(op, &p)| p || op.ret.is_none())
            {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                let blocked = (0..ops.len())
                    .any(|j| !placed[j] && j != i && ops[j].ret.is_some_and(|rj| rj < ops[i].call));
                if blocked {
                    continue;
                }
                let next = match &ops[i].kind {
                    OpKind::Write(v) => v.clone(),
                    OpKind::Read(v) => {
                        if *v != state {
                            continue;
                        }
                        state.clone()
                    }
                };
                placed[i] = true;
                if go(ops, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
            false
        }
        let mut placed = vec![false; ops.len()];
        go(&ops, &mut placed, init.map(str::to_owned))
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = Rng(42);
        let vals = [None, Some("a"), Some("b"), Some("c")];
        let (mut ok, mut bad) = (0, 0);
        for case in 0..6_000 {
            let n = 1 + rng.below(8) as usize;
            let mut h = Vec::new();
            for i in 0..n {
                let call = rng.below(20);
                let ret = if rng.chance(20) {
                    None
                } else {
                    Some(call + rng.below(10))
                };
                let v = vals[rng.below(4) as usize];
                let op = if rng.chance(50) {
                    Op {
                        client: i as u64,
                        key: "k".into(),
                        kind: OpKind::Write(v.map(str::to_owned)),
                        call,
                        ret,
                    }
                } else {
                    Op::read(i as u64, "k", v, call, ret)
                };
                h.push(op);
            }
            let init = vals[rng.below(4) as usize].filter(|_| rng.chance(30));
            let expected = brute_force(&h, init);
            let mut init_map = HashMap::new();
            if let Some(v) = init {
                init_map.insert("k".to_owned(), v.to_owned());
            }
            let got = check_with_initial(&h, &init_map);
            if let Err(v) = &got {
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "case {case}: {v}");
            }
            assert_eq!(got.is_ok(), expected, "case {case}: {h:#?}\n{got:?}");
            if expected {
                ok += 1;
            } else {
                bad += 1;
            }
        }
        // Make sure both outcomes were exercised substantially.
        assert!(ok > 1_000 && bad > 1_000, "ok={ok} bad={bad}");
    }

    // --- randomized simulation of an atomic register -----------------------------

    /// Simulates `clients` clients issuing ops against an atomic store. Each
    /// op takes effect at a random point strictly inside its [call, ret]
    /// interval, so the resulting history is linearizable by construction.
    /// Written values are unique. A few writes time out (some of which take
    /// effect much later, some never), and a few reads time out (returning
    /// garbage, which must be ignored).
    fn simulate(seed: u64, clients: u64, total_ops: usize, keys: &[&str], max_dur: u64) -> Vec<Op> {
        struct Planned {
            op: Op,
            lin: Option<u64>,
        }
        let mut rng = Rng(seed);
        let per_client = total_ops / clients as usize;
        let mut planned: Vec<Planned> = Vec::new();
        let mut counter = 0u64;
        for c in 0..clients {
            let mut t = rng.below(50);
            for _ in 0..per_client {
                let call = t + rng.below(max_dur / 2 + 1);
                let key = keys[rng.below(keys.len() as u64) as usize].to_owned();
                let roll = rng.below(100);
                let timed_out = rng.chance(3);
                let (op, lin) = if timed_out {
                    t = call + 3 * max_dur;
                    if roll < 50 {
                        (
                            Op::read(c, key, Some("garbage-never-written"), call, None),
                            None,
                        )
                    } else {
                        counter += 1;
                        let kind = if roll < 90 {
                            OpKind::Write(Some(format!("v{counter}")))
                        } else {
                            OpKind::Write(None)
                        };
                        let lin = if rng.chance(50) {
                            Some(call + 1 + rng.below(20 * max_dur))
                        } else {
                            None
                        };
                        (
                            Op {
                                client: c,
                                key,
                                kind,
                                call,
                                ret: None,
                            },
                            lin,
                        )
                    }
                } else {
                    let lin = call + 1 + rng.below(max_dur);
                    let ret = lin + 1 + rng.below(max_dur);
                    t = ret;
                    let kind = if roll < 50 {
                        OpKind::Read(None) // filled in below
                    } else if roll < 90 {
                        counter += 1;
                        OpKind::Write(Some(format!("v{counter}")))
                    } else {
                        OpKind::Write(None)
                    };
                    (
                        Op {
                            client: c,
                            key,
                            kind,
                            call,
                            ret: Some(ret),
                        },
                        Some(lin),
                    )
                };
                planned.push(Planned { op, lin });
            }
        }
        let mut order: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].lin.is_some())
            .collect();
        order.sort_by_key(|&i| (planned[i].lin, i));
        let mut store: HashMap<String, Option<String>> = HashMap::new();
        for i in order {
            let key = planned[i].op.key.clone();
            match &mut planned[i].op.kind {
                OpKind::Write(v) => {
                    store.insert(key, v.clone());
                }
                OpKind::Read(v) => *v = store.get(&key).cloned().flatten(),
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    /// Changes one completed read to return a value that was definitely
    /// overwritten before the read was invoked: picks a completed write W2
    /// that returned before the read's call, and a completed put W1 of a
    /// (unique) value that returned before W2 was invoked. W1 < W2 < read in
    /// every linearization, and nothing else writes W1's value.
    fn mutate_stale(h: &mut [Op], key: &str) -> usize {
        let writes: Vec<usize> = (0..h.len())
            .filter(|&i| {
                h[i].key == key && h[i].ret.is_some() && matches!(h[i].kind, OpKind::Write(_))
            })
            .collect();
        let mut reads: Vec<usize> = (0..h.len())
            .filter(|&i| {
                h[i].key == key && h[i].ret.is_some() && matches!(h[i].kind, OpKind::Read(_))
            })
            .collect();
        reads.sort_by_key(|&i| h[i].call);
        let mid = reads.len() / 2;
        for &ri in reads[mid..].iter().chain(reads[..mid].iter()) {
            let call_r = h[ri].call;
            let Some(w2) = writes
                .iter()
                .copied()
                .filter(|&i| h[i].ret.is_some_and(|t| t < call_r))
                .max_by_key(|&i| h[i].ret)
            else {
                continue;
            };
            let call_w2 = h[w2].call;
            let Some(w1) = writes
                .iter()
                .copied()
                .filter(|&i| h[i].ret.is_some_and(|t| t < call_w2))
                .filter(|&i| matches!(h[i].kind, OpKind::Write(Some(_))))
                .max_by_key(|&i| h[i].ret)
            else {
                continue;
            };
            let OpKind::Write(stale) = h[w1].kind.clone() else {
                continue;
            };
            let OpKind::Read(seen) = &mut h[ri].kind else {
                continue;
            };
            assert_ne!(*seen, stale, "original history was not linearizable?");
            *seen = stale;
            return ri;
        }
        panic!("no read suitable for a stale mutation");
    }

    #[test]
    fn randomized_linearizable_history_passes() {
        for seed in 1..=4 {
            let h = simulate(seed, 8, 2_000, &["k"], 100);
            let started = std::time::Instant::now();
            let s = match check(&h) {
                Ok(s) => s,
                Err(v) => panic!("seed {seed}: simulated atomic history rejected:\n{v}"),
            };
            assert_eq!(s.keys_checked, 1);
            assert!(s.ops_checked > 1_900, "{s}");
            assert!(s.unknown_writes > 0 && s.ignored_reads > 0, "{s}");
            eprintln!("seed {seed}: {s} in {:?}", started.elapsed());
        }
    }

    #[test]
    fn randomized_stale_read_is_detected() {
        for seed in 1..=4 {
            let mut h = simulate(seed, 8, 2_000, &["k"], 100);
            let ri = mutate_stale(&mut h, "k");
            let started = std::time::Instant::now();
            match check(&h) {
                Ok(s) => panic!("seed {seed}: stale read #{ri} not detected ({s})"),
                Err(v) => {
                    assert_eq!(v.kind, ViolationKind::NotLinearizable, "seed {seed}: {v}");
                    assert_eq!(v.key, "k");
                    eprintln!(
                        "seed {seed}: violation found after {} states in {:?}",
                        v.states_explored,
                        started.elapsed()
                    );
                }
            }
        }
    }

    #[test]
    fn randomized_highly_concurrent_history() {
        // Long op durations relative to think time: ~8 ops in flight always.
        let h = simulate(99, 8, 2_000, &["k"], 1_000);
        let s = check(&h).unwrap_or_else(|v| panic!("{v}"));
        eprintln!("high concurrency: {s}");
        let mut bad = h.clone();
        mutate_stale(&mut bad, "k");
        let v = check(&bad).expect_err("stale read");
        assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
    }

    #[test]
    fn randomized_multi_key_history_names_the_mutated_key() {
        let keys = ["k0", "k1", "k2", "k3"];
        let mut h = simulate(7, 8, 4_000, &keys, 100);
        let s = check(&h).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(s.keys_checked, 4);
        mutate_stale(&mut h, "k2");
        let v = check(&h).expect_err("stale read on k2");
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
        assert_eq!(v.key, "k2");
    }
}
