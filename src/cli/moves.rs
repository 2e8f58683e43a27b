//! CLI: where tenants live, move jobs, rebalancing and drains.

use std::time::Duration;

use comfy_table::{presets::NOTHING, Table};
use indicatif::{ProgressBar, ProgressStyle};
use vektagraf::client::Client;
use vektagraf::proto::{JobState, MoveJob, Plan, PlanStep};

use super::{print, CliError, Output};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

/// `tenant placement`: each replica's node, role, state and lag.
pub(super) async fn placement(c: &Client, out: Output, tenant: &str) -> Result<(), CliError> {
    let info = c.shard_info(tenant).await?;
    if let Output::Json = out {
        return Ok(print(out, &info)?);
    }
    let leader = info.leader_node;
    let mut t = table(&["replica", "node", "role", "state", "matched", "behind"]);
    let mut ids: Vec<(u64, u64)> = info.replicas.clone();
    // Members the record no longer lists (a change under way).
    for id in info.voters.iter().chain(&info.learners) {
        if !ids.iter().any(|(r, _)| r == id) {
            ids.push((*id, 0));
        }
    }
    for (replica, node) in ids {
        let voter = info.voters.contains(&replica);
        let learner = info.learners.contains(&replica);
        let role = if Some(node) == leader && voter {
            "leader"
        } else if voter {
            "voter"
        } else if learner {
            "learner"
        } else {
            "joining"
        };
        let matched = info
            .matched
            .iter()
            .find(|(r, _)| *r == replica)
            .map(|(_, m)| *m);
        let behind = matched.map(|m| info.last_log_index.saturating_sub(m));
        let snapshot = info.snapshots.iter().find(|(n, _, _)| *n == node);
        let state = if let Some((_, sent, all)) = snapshot {
            format!("receiving snapshot {}/{} MB", sent >> 20, all >> 20)
        } else if node == info.answered_by && info.quiesced {
            "quiesced".into()
        } else if !voter && !learner {
            "not yet in the group".into()
        } else if behind.is_some_and(|b| b > 64) {
            "catching up".into()
        } else if learner {
            "learner, caught up".into()
        } else {
            "in sync".into()
        };
        t.add_row(vec![
            replica.to_string(),
            if node == 0 {
                "-".into()
            } else {
                node.to_string()
            },
            role.into(),
            state,
            matched.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            behind.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    println!(
        "tenant {} · group {} · leader node {} · {} objects, {} vectors, {} edges, {:.1} MB{}",
        info.tenant_id,
        info.group,
        leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into()),
        info.usage.objects,
        info.usage.vectors,
        info.usage.edges,
        info.usage.bytes as f64 / 1e6,
        if info.joint {
            " · membership change under way"
        } else {
            ""
        }
    );
    println!("{t}");
    let voters = info.voters.len() as u64;
    if voters < info.replication_factor {
        println!(
            "warning: under-replicated: {voters} of {} voters",
            info.replication_factor
        );
    }
    println!(
        "(as node {} sees it: last log index {}, applied {})",
        info.answered_by, info.last_log_index, info.applied
    );
    Ok(())
}

fn job_rows(jobs: &[MoveJob]) -> Table {
    let mut t = table(&[
        "job", "tenant", "from", "to", "state", "origin", "age", "reason",
    ]);
    let now = vektagraf::util::now_ms();
    for j in jobs {
        t.add_row(vec![
            j.id.to_string(),
            j.tenant_id.clone(),
            j.from_node.to_string(),
            j.to_node.to_string(),
            state_text(j),
            j.origin.clone(),
            format!("{} s", now.saturating_sub(j.created_ms) / 1000),
            j.reason.clone().unwrap_or_default(),
        ]);
    }
    t
}

fn state_text(j: &MoveJob) -> String {
    let mut s = j.state.to_string();
    if j.cancel_requested && !j.state.is_terminal() {
        s.push_str(" (cancelling)");
    }
    if j.state == JobState::CatchingUp {
        s.push_str(&format!(" ({} behind)", j.behind));
    }
    s
}

/// Prints jobs as a table or JSON.
pub(super) fn print_jobs(out: Output, jobs: &[MoveJob]) -> Result<(), CliError> {
    match out {
        Output::Json => Ok(print(out, &jobs)?),
        Output::Table if jobs.is_empty() => {
            println!("no move jobs");
            Ok(())
        }
        Output::Table => {
            println!("{}", job_rows(jobs));
            Ok(())
        }
    }
}

/// Prints a plan: its steps, the load before and after, and its jobs.
pub(super) fn print_plan(out: Output, plan: &Plan, dry_run: bool) -> Result<(), CliError> {
    if let Output::Json = out {
        return Ok(print(out, plan)?);
    }
    if plan.steps.is_empty() {
        println!("balanced: nothing to move");
    }
    for (i, s) in plan.steps.iter().enumerate() {
        match s {
            PlanStep::Move { tenant, from, to } => {
                println!(
                    "{:>3}. move a replica of {tenant} from node {from} to node {to}",
                    i + 1
                )
            }
            PlanStep::Lead { tenant, from, to } => println!(
                "{:>3}. hand the leadership of {tenant} from node {from} to node {to}",
                i + 1
            ),
        }
    }
    let mut t = table(&[
        "node",
        "replicas",
        "leaders",
        "replicas after",
        "leaders after",
    ]);
    for ((n, r, l), (_, r2, l2)) in plan.before.iter().zip(&plan.after) {
        t.add_row(vec![
            n.to_string(),
            r.to_string(),
            l.to_string(),
            r2.to_string(),
            l2.to_string(),
        ]);
    }
    println!("{t}");
    if dry_run {
        println!("dry run: nothing started");
    } else if !plan.jobs.is_empty() {
        println!(
            "started move jobs {:?}; follow them with `vektagraf job list`",
            plan.jobs
        );
    }
    Ok(())
}

/// Follows a job with a progress bar until it ends; fails unless it
/// ends done.
pub(super) async fn watch(c: &Client, id: u64) -> Result<MoveJob, CliError> {
    const STEPS: [JobState; 7] = [
        JobState::Registered,
        JobState::AddingLearner,
        JobState::CatchingUp,
        JobState::Promoting,
        JobState::TransferringLeadership,
        JobState::RemovingSource,
        JobState::Done,
    ];
    let bar = ProgressBar::new(STEPS.len() as u64 - 1);
    bar.set_style(
        ProgressStyle::with_template("job {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    let mut last_err = 0;
    loop {
        let j = match c.job(id).await {
            Ok(j) => {
                last_err = 0;
                j
            }
            // The driver may be changing hands: keep watching a while.
            Err(e) if e.is_retryable() && last_err < 40 => {
                last_err += 1;
                bar.set_message(format!("(waiting for the cluster: {e})"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let pos = STEPS.iter().position(|s| *s == j.state).unwrap_or(0);
        bar.set_position(pos as u64);
        let mut msg = state_text(&j);
        if j.snapshot_bytes > 0 {
            msg.push_str(&format!(
                " · snapshot {:.1}/{:.1} MB",
                j.snapshot_sent as f64 / 1e6,
                j.snapshot_bytes as f64 / 1e6
            ));
        }
        bar.set_message(msg);
        if j.state.is_terminal() {
            bar.finish();
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The outcome line of a finished job; an error unless it is done.
pub(super) fn outcome(j: &MoveJob) -> Result<(), CliError> {
    match j.state {
        JobState::Done => {
            println!(
                "job {}: moved a replica of {} from node {} to node {}",
                j.id, j.tenant_id, j.from_node, j.to_node
            );
            Ok(())
        }
        _ => Err(anyhow::anyhow!(
            "job {} ended {}: {}",
            j.id,
            j.state,
            j.reason.as_deref().unwrap_or("no reason given")
        )
        .into()),
    }
}
