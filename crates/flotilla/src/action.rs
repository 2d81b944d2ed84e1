//! `flotilla action list|show|wait|cancel`: following long operations.

use std::io::IsTerminal;
use std::time::Duration;

use crate::output;
use anyhow::{bail, Result};
use clap::Subcommand;
use flotilla_client::Client;
use flotilla_model::rest::ActionInfo;
use flotilla_model::{ActionStatus, StepState};

/// `flotilla action` subcommands.
#[derive(Subcommand)]
pub enum ActionCommand {
    /// List actions, running and finished.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one action with its steps.
    Show {
        /// Action uid.
        uid: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow an action until it ends (a progress bar on a terminal, plain lines otherwise).
    Wait {
        /// Action uid.
        uid: u64,
    },
    /// Ask an action to stop at its next safe step boundary (a paused one stops at once).
    Cancel {
        /// Action uid.
        uid: u64,
    },
    /// Continue a paused action (once the operator did what it asked) or a failed one (once
    /// its cause is fixed) at the step where it stopped, and follow it.
    Resume {
        /// Action uid.
        uid: u64,
        /// Return at once instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
}

fn status_word(status: ActionStatus) -> &'static str {
    match status {
        ActionStatus::Running => "running",
        ActionStatus::Completed => "completed",
        ActionStatus::Failed => "failed",
        ActionStatus::Cancelled => "cancelled",
        ActionStatus::Paused => "paused",
    }
}

/// The `action list` table: one line per action with its step and progress.
fn print_list(actions: &[ActionInfo]) {
    println!(
        "{:<8} {:<14} {:<8} {:<10} {:>6}  STEP",
        "ACTION", "NAME", "OBJECT", "STATUS", "DONE"
    );
    for a in actions {
        println!(
            "{:<8} {:<14} {:<8} {:<10} {:>5.0}%  {}",
            a.action_uid,
            a.name,
            a.object,
            status_word(a.status),
            a.progress,
            a.pending_ops
        );
    }
}

/// Runs an action subcommand.
pub async fn run(client: &Client, command: ActionCommand) -> Result<()> {
    match command {
        ActionCommand::List { json } => {
            let actions = client.actions().await?;
            output::print_or_json(&actions, json, |actions| print_list(actions))
        }
        ActionCommand::Show { uid, json } => {
            let action = client.action(uid).await?;
            output::print_or_json(&action, json, print_action)?;
            Ok(())
        }
        ActionCommand::Wait { uid } => wait(client, uid).await,
        ActionCommand::Resume { uid, no_wait } => {
            let action = client.resume_action(uid).await?;
            println!("action {uid} resumed at '{}'", action.pending_ops);
            if no_wait {
                return Ok(());
            }
            wait(client, uid).await
        }
        ActionCommand::Cancel { uid } => {
            let action = client.cancel_action(uid).await?;
            println!(
                "action {uid} will stop at its next safe boundary (now at '{}')",
                action.pending_ops
            );
            Ok(())
        }
    }
}

fn print_action(action: &ActionInfo) {
    println!(
        "action {} {} on {}: {}",
        action.action_uid,
        action.name,
        action.object,
        status_word(action.status)
    );
    for (i, step) in action.steps.iter().enumerate() {
        // A node older than the plan field answers only the names.
        let state = action
            .plan
            .get(i)
            .map(|s| s.state)
            .unwrap_or_else(|| StepState::at(i, action.step_index, action.status));
        let mark = match state {
            StepState::Done => "done",
            StepState::Current if action.status == ActionStatus::Failed => "fail",
            StepState::Current if action.status == ActionStatus::Paused => "wait",
            StepState::Current => "now ",
            StepState::Pending => "    ",
        };
        println!("  [{mark}] {step}");
    }
    if let Some(error) = &action.error {
        println!("  error: {error}");
    }
}

/// Follows action `uid` until it ends (completed, paused for the operator, or failed); fails
/// unless it completed or paused (a paused action says what the operator does next).
pub async fn wait(client: &Client, uid: u64) -> Result<()> {
    let started = std::time::Instant::now();
    let action = follow(client, uid, &mut 0).await?;
    match action.status {
        ActionStatus::Completed => {
            println!(
                "action {uid} completed in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        ActionStatus::Paused => {
            println!(
                "action {uid} paused at '{}': {}",
                action.pending_ops,
                action
                    .error
                    .as_deref()
                    .unwrap_or("waiting for the operator")
            );
            Ok(())
        }
        status => bail!(
            "action {uid} {}: {}",
            status_word(status),
            action
                .error
                .unwrap_or_else(|| format!("stopped at '{}'", action.pending_ops))
        ),
    }
}

/// Shows action `uid`'s progress (a bar on a terminal, a line per finished step otherwise)
/// until it stops running; returns it as it stopped. `printed` counts the finished steps
/// already shown (by an earlier call for the same action).
pub async fn follow(client: &Client, uid: u64, printed: &mut usize) -> Result<ActionInfo> {
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos:>3}% {msg}")
                .expect("static template"),
        );
        bar
    });
    let action = loop {
        let action = client.action(uid).await?;
        match &bar {
            Some(bar) => {
                bar.set_position(action.progress as u64);
                bar.set_message(action.pending_ops.clone());
            }
            // Plain output: one line per finished step with how long it took.
            None => {
                for record in action.history.iter().skip(*printed) {
                    println!(
                        "  {:>8.3} s  {}",
                        record.duration_ms as f64 / 1000.0,
                        record.step
                    );
                }
                *printed = action.history.len();
            }
        }
        if action.status != ActionStatus::Running {
            break action;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(bar) = bar {
        bar.finish_with_message(status_word(action.status));
    }
    Ok(action)
}
