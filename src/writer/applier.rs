//! The second thread: applies frozen layers to the store file, one apply
//! step at a time, while the writer goes on logging groups into the next
//! layer. It owns nothing but the step in hand; the writer decides what to
//! freeze and when, and learns of each step's end through `done`.

use crate::store::durability::apply_step;
use crate::store::layers::SharedLayer;
use crate::store::StoreError;
use crossbeam_channel::{Receiver, Sender};
use redb::Database;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One apply step: a frozen layer and the last group it holds.
pub struct Job {
    pub db: Arc<Database>,
    pub layer: SharedLayer,
    pub last_group: u64,
    pub quick_repair: bool,
}

/// What the applier thread is handed.
pub enum Task {
    Apply(Job),
    /// Layers no longer needed: freeing a second's worth of entries takes
    /// milliseconds, which the writer should not spend.
    Dispose(Vec<SharedLayer>),
}

/// How an apply step ended.
pub struct Done {
    pub result: Result<u64, StoreError>,
    pub took: Duration,
}

/// The thread that applies, or (in tests) the writer applying each step
/// itself when it is handed over, so that a test decides when steps
/// happen.
pub enum Applier {
    Thread {
        /// One step at a time: the writer hands over the next only after
        /// the last is done.
        jobs: Option<Sender<Task>>,
        done: Receiver<Done>,
        thread: Option<JoinHandle<()>>,
    },
    #[cfg(test)]
    Inline { done: Option<Done> },
}

impl Applier {
    pub fn spawn() -> std::io::Result<Applier> {
        // A step and the layers of the last one to free.
        let (jobs, inbox) = crossbeam_channel::bounded::<Task>(2);
        let (outbox, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("pm-applier".into())
            .spawn(move || {
                for task in inbox {
                    match task {
                        Task::Apply(job) => {
                            if outbox.send(run(job)).is_err() {
                                break;
                            }
                        }
                        Task::Dispose(layers) => drop(layers),
                    }
                }
            })?;
        Ok(Applier::Thread {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    #[cfg(test)]
    pub fn inline() -> Applier {
        Applier::Inline { done: None }
    }

    /// Hands over a step; call only when none is under way.
    pub fn start(&mut self, job: Job) {
        match self {
            Applier::Thread { jobs, .. } => {
                if let Some(jobs) = jobs {
                    // The last step is done: there is room.
                    let _ = jobs.send(Task::Apply(job));
                }
            }
            #[cfg(test)]
            Applier::Inline { done } => *done = Some(run(job)),
        }
    }

    /// Frees `layers` on the applier's thread (where the last reference
    /// held here goes); a reader that still holds one frees it later.
    pub fn dispose(&mut self, layers: Vec<SharedLayer>) {
        match self {
            Applier::Thread {
                jobs: Some(jobs), ..
            } => {
                // Should the thread be busy with a step and one dispose
                // already, this one is freed here instead.
                let _ = jobs.try_send(Task::Dispose(layers));
            }
            _ => drop(layers),
        }
    }

    /// The step under way's end, if it came.
    pub fn try_done(&mut self) -> Option<Done> {
        match self {
            Applier::Thread { done, .. } => done.try_recv().ok(),
            #[cfg(test)]
            Applier::Inline { done } => done.take(),
        }
    }

    /// Waits for the step under way to end.
    pub fn wait(&mut self) -> Option<Done> {
        match self {
            Applier::Thread { done, .. } => done.recv().ok(),
            #[cfg(test)]
            Applier::Inline { done } => done.take(),
        }
    }

    /// The receiver of step ends, for the writer to wait on with requests.
    pub fn done_channel(&self) -> Option<&Receiver<Done>> {
        match self {
            Applier::Thread { done, .. } => Some(done),
            #[cfg(test)]
            Applier::Inline { .. } => None,
        }
    }

    /// Ends the thread once its step in hand, if any, is done.
    pub fn stop(&mut self) {
        match self {
            Applier::Thread { jobs, thread, .. } => {
                jobs.take();
                if let Some(thread) = thread.take() {
                    if thread.join().is_err() {
                        tracing::error!("the applier thread panicked");
                    }
                }
            }
            #[cfg(test)]
            Applier::Inline { .. } => {}
        }
    }
}

fn run(job: Job) -> Done {
    let started = Instant::now();
    let layer = job.layer.read().unwrap_or_else(PoisonError::into_inner);
    let result = apply_step(&job.db, &[&layer], job.last_group, job.quick_repair);
    Done {
        result,
        took: started.elapsed(),
    }
}
