//! Tenant move jobs: one replica of a tenant's shard group moved from one
//! node to another, online. A job is a record in the metadata group
//! (group 0); every state change is committed there before it is acted
//! on, so whichever node leads group 0 next resumes it.

use serde::{Deserialize, Serialize};

/// Where a move job is. The happy path runs top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded; waits for a slot (`cluster.max_moves_in_flight`).
    Registered,
    /// The target replica is in the tenant record as a learner; the
    /// shard leader adds it to the group.
    AddingLearner,
    /// The target is a learner and receives the log (or a snapshot).
    CatchingUp,
    /// The target is caught up and is being made a voter.
    Promoting,
    /// The source leads the group: leadership goes to another voter.
    TransferringLeadership,
    /// The source replica leaves the group and its node purges it.
    RemovingSource,
    /// Moved.
    Done,
    /// Cancelled; the group is back to its old membership.
    Cancelled,
    /// Gave up (see the reason); the group is back to its old membership.
    Failed,
}

impl JobState {
    /// Done, cancelled or failed: nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Cancelled | JobState::Failed
        )
    }

    /// A cancel (or failure) can still put the group back as it was.
    pub fn can_roll_back(self) -> bool {
        self < JobState::RemovingSource
    }

    /// The name shown by the CLI and logs.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Registered => "registered",
            JobState::AddingLearner => "adding_learner",
            JobState::CatchingUp => "catching_up",
            JobState::Promoting => "promoting",
            JobState::TransferringLeadership => "transferring_leadership",
            JobState::RemovingSource => "removing_source",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A move of one replica of a tenant's shard group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJob {
    /// Format version.
    pub v: u32,
    /// Job id (from a group-0 counter; never reused).
    pub id: u64,
    /// Tenant.
    pub tenant_id: String,
    /// Its shard group.
    pub group: u64,
    /// Node the replica leaves.
    pub from_node: u64,
    /// Raft id of the replica that leaves.
    pub from_replica: u64,
    /// Node the replica goes to.
    pub to_node: u64,
    /// Raft id of the new replica (fresh, never reused).
    pub to_replica: u64,
    /// Where the job is.
    pub state: JobState,
    /// An operator asked to cancel it.
    pub cancel_requested: bool,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Who asked: `move`, `rebalance` or `drain`.
    pub origin: String,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Last state change, ms since the epoch.
    pub updated_ms: u64,
    /// Log entries the target still lacked when last seen (catching up;
    /// live, from the driving node).
    pub behind: u64,
    /// Bytes of the snapshot stream to the target sent so far (live).
    pub snapshot_sent: u64,
    /// Bytes of that snapshot stream in all (live; 0: none running).
    pub snapshot_bytes: u64,
}

/// One step of a rebalance or drain plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanStep {
    /// Move `tenant`'s replica from node `from` to node `to` (a job).
    Move {
        /// Tenant.
        tenant: String,
        /// Source node.
        from: u64,
        /// Target node.
        to: u64,
    },
    /// Hand the leadership of `tenant`'s group from node `from` to node
    /// `to` (both hold replicas).
    Lead {
        /// Tenant.
        tenant: String,
        /// Node leading now.
        from: u64,
        /// Node to lead.
        to: u64,
    },
}

/// A rebalance or drain: its plan and the jobs started for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<PlanStep>,
    /// Jobs registered for the `Move` steps (none on a dry run).
    pub jobs: Vec<u64>,
    /// Replicas per live node before the plan, as (node, replicas,
    /// leaders).
    pub before: Vec<(u64, usize, usize)>,
    /// The same after the plan (as planned).
    pub after: Vec<(u64, usize, usize)>,
}
