//! A test hook: message delay and loss on the peer transport of a real
//! process, switched on from outside (the kernel of the test machines
//! has no netem, and nftables can drop packets but not delay them).
//!
//! - Off unless the environment variable `VEKTAGRAF_FAULTS` names a file
//!   when the node starts. Then a thread re-reads that file every
//!   [`RELOAD_EVERY`]; a missing or empty file means no faults. When the
//!   variable is unset, each hook is one load of a `OnceLock` and a
//!   branch: nothing is read, spawned or locked.
//! - The file has one rule per line (`#` starts a comment):
//!   `peer=<id|*> dir=<out|in|both> delay_ms=<n> jitter_ms=<n> drop_percent=<0-100>`
//!   (every key but `peer` optional, `dir` defaults to `both`).
//!   `out` applies to the requests this node sends to that peer, `in` to
//!   the requests it receives from that peer, before serving them. The
//!   first rule naming the peer wins, then the first `*` rule.
//! - A message is delayed by `delay_ms` plus a uniform `0..=jitter_ms`,
//!   then dropped with probability `drop_percent`%: a dropped request
//!   fails as unreachable (out), or its stream is closed unanswered (in).
//!   Answers are not delayed separately; one-way delay of a round trip
//!   is the `out` rule of one end, or the `in` rule of the other.
//! - A line that does not parse is logged, and the previous rules stay.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use rand::Rng;

/// The environment variable naming the fault file.
pub const ENV: &str = "VEKTAGRAF_FAULTS";
/// How often the fault file is re-read.
pub const RELOAD_EVERY: Duration = Duration::from_millis(200);

/// Which messages a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Requests this node sends.
    Out,
    /// Requests this node receives.
    In,
    /// Both.
    Both,
}

impl Direction {
    fn covers(self, d: Direction) -> bool {
        self == Direction::Both || self == d
    }
}

/// One line of the fault file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Peer node id; `None` for every peer (`*`).
    pub peer: Option<u64>,
    /// Direction.
    pub dir: Direction,
    /// Fixed delay.
    pub delay_ms: u64,
    /// Extra uniform delay, `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Loss probability, in percent.
    pub drop_percent: u8,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Wait this long first.
    pub delay: Duration,
    /// Then drop it.
    pub drop: bool,
}

/// Parses a fault file.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut rule = Rule {
            peer: None,
            dir: Direction::Both,
            delay_ms: 0,
            jitter_ms: 0,
            drop_percent: 0,
        };
        let mut has_peer = false;
        for word in line.split_whitespace() {
            let bad = || format!("line {}: bad {word:?}", n + 1);
            let (k, v) = word.split_once('=').ok_or_else(bad)?;
            match k {
                "peer" => {
                    has_peer = true;
                    rule.peer = if v == "*" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| bad())?)
                    };
                }
                "dir" => {
                    rule.dir = match v {
                        "out" => Direction::Out,
                        "in" => Direction::In,
                        "both" => Direction::Both,
                        _ => return Err(bad()),
                    }
                }
                "delay_ms" => rule.delay_ms = v.parse().map_err(|_| bad())?,
                "jitter_ms" => rule.jitter_ms = v.parse().map_err(|_| bad())?,
                "drop_percent" => {
                    rule.drop_percent = v.parse().map_err(|_| bad())?;
                    if rule.drop_percent > 100 {
                        return Err(bad());
                    }
                }
                _ => return Err(bad()),
            }
        }
        if !has_peer {
            return Err(format!("line {}: no peer=", n + 1));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// The rule for a message to or from `peer` in direction `dir`: the first
/// naming the peer, else the first for every peer.
pub fn rule_for(rules: &[Rule], peer: u64, dir: Direction) -> Option<&Rule> {
    let applies = |r: &&Rule| r.dir.covers(dir);
    rules
        .iter()
        .filter(applies)
        .find(|r| r.peer == Some(peer))
        .or_else(|| rules.iter().filter(applies).find(|r| r.peer.is_none()))
}

impl Rule {
    /// The verdict for one message, given a uniform `jitter` draw in
    /// `0..=jitter_ms` and a `roll` in `0..100`.
    pub fn verdict(&self, jitter: u64, roll: u8) -> Verdict {
        Verdict {
            delay: Duration::from_millis(self.delay_ms + jitter.min(self.jitter_ms)),
            drop: roll < self.drop_percent,
        }
    }
}

/// The rules in force, re-read from the file.
struct Active {
    rules: RwLock<Vec<Rule>>,
}

fn active() -> Option<&'static Arc<Active>> {
    static ACTIVE: OnceLock<Option<Arc<Active>>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| {
            let path = PathBuf::from(std::env::var_os(ENV)?);
            tracing::warn!(file = %path.display(), "peer fault injection is on ({ENV})");
            let a = Arc::new(Active {
                rules: RwLock::new(Vec::new()),
            });
            let watched = a.clone();
            let spawned = std::thread::Builder::new()
                .name("peer-faults".into())
                .spawn(move || watch(&path, &watched));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the fault file watcher");
            }
            Some(a)
        })
        .as_ref()
}

fn watch(path: &std::path::Path, a: &Active) {
    let mut last: Option<String> = None;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if last.as_deref() != Some(text.as_str()) {
            match parse(&text) {
                Ok(rules) => {
                    tracing::info!(?rules, "peer fault rules");
                    *a.rules.write() = rules;
                }
                Err(e) => tracing::warn!(error = %e, "fault file ignored"),
            }
            last = Some(text);
        }
        std::thread::sleep(RELOAD_EVERY);
    }
}

/// Applies the rules to one message to or from `peer`: waits the delay,
/// then answers whether to drop it. Without `VEKTAGRAF_FAULTS`, false at
/// once.
pub async fn apply(peer: u64, dir: Direction) -> bool {
    let Some(a) = active() else {
        return false;
    };
    let verdict = {
        let rules = a.rules.read();
        let Some(rule) = rule_for(&rules, peer, dir) else {
            return false;
        };
        let mut rng = rand::thread_rng();
        rule.verdict(rng.gen_range(0..=rule.jitter_ms), rng.gen_range(0..100))
    };
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    verdict.drop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_defaults_and_comments() {
        let rules = parse(
            "# delay to node 2\npeer=2 dir=out delay_ms=300 jitter_ms=50\n\npeer=* drop_percent=20 # loss\n",
        )
        .unwrap();
        assert_eq!(
            rules,
            vec![
                Rule {
                    peer: Some(2),
                    dir: Direction::Out,
                    delay_ms: 300,
                    jitter_ms: 50,
                    drop_percent: 0
                },
                Rule {
                    peer: None,
                    dir: Direction::Both,
                    delay_ms: 0,
                    jitter_ms: 0,
                    drop_percent: 20
                },
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_number() {
        assert_eq!(
            parse("peer=1\npeer=2 dir=sideways").unwrap_err(),
            "line 2: bad \"dir=sideways\""
        );
        assert!(parse("drop_percent=5").unwrap_err().contains("no peer="));
        assert!(parse("peer=1 drop_percent=101").is_err());
        assert!(parse("peer=x").is_err());
    }

    #[test]
    fn a_rule_naming_the_peer_wins_over_a_wildcard_and_direction_filters() {
        let rules = parse("peer=* delay_ms=1\npeer=3 dir=in delay_ms=2").unwrap();
        assert_eq!(rule_for(&rules, 3, Direction::In).unwrap().delay_ms, 2);
        assert_eq!(rule_for(&rules, 3, Direction::Out).unwrap().delay_ms, 1);
        assert_eq!(rule_for(&rules, 4, Direction::In).unwrap().delay_ms, 1);
        let only_out = parse("peer=2 dir=out drop_percent=100").unwrap();
        assert!(rule_for(&only_out, 2, Direction::In).is_none());
        assert!(rule_for(&only_out, 1, Direction::Out).is_none());
    }

    #[test]
    fn verdicts_add_bounded_jitter_and_drop_below_the_percentage() {
        let r = parse("peer=1 delay_ms=100 jitter_ms=20 drop_percent=25").unwrap()[0].clone();
        assert_eq!(
            r.verdict(7, 24),
            Verdict {
                delay: Duration::from_millis(107),
                drop: true
            }
        );
        assert_eq!(r.verdict(500, 25).delay, Duration::from_millis(120));
        assert!(!r.verdict(0, 25).drop);
        assert!(!parse("peer=1").unwrap()[0].verdict(0, 0).drop);
    }
}
