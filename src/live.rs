//! What the writer announces after each commit, for those who wait on it:
//! the last durable seq (change-feed streams) and the processes that ended
//! (`/await`). Nothing here polls: waiters sleep until the writer says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{watch, Notify};

pub struct Live {
    last_seq: watch::Sender<u64>,
    /// Process id -> the waiters on its end. An entry lives while someone
    /// holds an `EndWatch` of it.
    endings: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Live {
    pub fn new(last_seq: u64) -> Arc<Live> {
        Arc::new(Live {
            last_seq: watch::Sender::new(last_seq),
            endings: Mutex::new(HashMap::new()),
        })
    }

    /// The writer committed up to `last_seq`, durably; `ended` turned
    /// terminal or were removed by that commit. Called from the writer
    /// thread; never blocks on a waiter.
    pub fn committed(&self, last_seq: u64, ended: &[String]) {
        self.last_seq.send_if_modified(|seq| {
            let moved = *seq != last_seq;
            *seq = last_seq;
            moved
        });
        if ended.is_empty() {
            return;
        }
        let endings = self.endings.lock().unwrap_or_else(PoisonError::into_inner);
        if endings.is_empty() {
            return;
        }
        for id in ended {
            if let Some(notify) = endings.get(id) {
                notify.notify_waiters();
            }
        }
    }

    /// Follows the last durable seq.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Registers interest in the end of `process_id`. Create the
    /// `notified()` future and enable it before reading the process, so
    /// that an end committed in between is not missed.
    pub fn watch_end(self: &Arc<Self>, process_id: &str) -> EndWatch {
        let notify = self
            .endings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(process_id.to_owned())
            .or_default()
            .clone();
        EndWatch {
            live: self.clone(),
            process_id: process_id.to_owned(),
            notify,
        }
    }

    /// Processes with someone waiting on their end.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.endings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Interest in one process's end; dropping the last one forgets it.
pub struct EndWatch {
    live: Arc<Live>,
    process_id: String,
    notify: Arc<Notify>,
}

impl EndWatch {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        let mut endings = self
            .live
            .endings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two references: the map's and this watch's own.
        if Arc::strong_count(&self.notify) == 2 {
            endings.remove(&self.process_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_on_its_process_only_and_is_forgotten_when_dropped() {
        let live = Live::new(0);
        let watch = live.watch_end("p");
        let other = live.watch_end("q");
        {
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let q_notified = other.notify().notified();
            tokio::pin!(q_notified);
            q_notified.as_mut().enable();
            live.committed(5, &["p".to_owned()]);
            notified.await;
            // Woken by nothing but its own process's end: still waiting.
            assert!(std::future::Future::poll(
                q_notified.as_mut(),
                &mut std::task::Context::from_waker(std::task::Waker::noop())
            )
            .is_pending());
        }
        assert_eq!(*live.subscribe().borrow(), 5);
        drop(watch);
        assert_eq!(live.watched(), 1);
        drop(other);
        assert_eq!(live.watched(), 0);
    }
}
