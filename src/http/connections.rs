//! The connections a listener holds, and which one gives way when it is
//! full.
//!
//! A full house must not lock everyone out: 1,024 clients that connect and
//! send nothing (or half a header, slowly) would otherwise make every new
//! client, the kubelet's probes included, wait for a header timeout. So a
//! new connection that finds the listener full closes an idle one (no
//! request in service): first the one idle longest of those that never
//! sent a whole request (nothing, or part of a header), then, only if
//! there are none, the keep-alive connection idle longest, whose client
//! has been served and may be about to send again. Only when every
//! connection is serving a request is the new one refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// One listener's connections.
pub struct Connections {
    max: usize,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// One connection: whether it serves a request, since when it is idle,
/// and the switch that closes it.
pub struct Connection {
    id: u64,
    /// Requests in service: from the handler's start until the answer's
    /// body has been sent (or dropped).
    in_service: AtomicUsize,
    /// Milliseconds after the epoch of the last start or end of a request,
    /// or of the connection's opening.
    last_active_ms: AtomicU64,
    /// A whole request has arrived on it at least once.
    served: AtomicBool,
    /// Cancelled to close the connection.
    pub close: CancellationToken,
}

/// A connection's place in the table, given up when dropped.
pub struct Registration {
    connections: Arc<Connections>,
    pub connection: Arc<Connection>,
}

/// What `admit` decided for a new connection.
pub enum Admission {
    /// Taken; `closed_idle` when an idle connection was closed to make room.
    Admitted {
        registration: Registration,
        closed_idle: bool,
    },
    /// Full of connections that are all serving a request.
    Refused,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a new connection, closing the one idle longest if the
    /// listener is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.table();
        let mut closed_idle = false;
        if open.len() >= self.max {
            let idlest = open
                .values()
                .filter(|connection| connection.in_service.load(Ordering::Acquire) == 0)
                .min_by_key(|connection| {
                    (
                        connection.served.load(Ordering::Relaxed),
                        connection.last_active_ms.load(Ordering::Relaxed),
                    )
                })
                .map(|connection| connection.id);
            let Some(id) = idlest.and_then(|id| open.remove(&id)) else {
                return Admission::Refused;
            };
            id.close.cancel();
            closed_idle = true;
        }
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_service: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            served: AtomicBool::new(false),
            close: CancellationToken::new(),
        });
        open.insert(connection.id, connection.clone());
        Admission::Admitted {
            registration: Registration {
                connections: self.clone(),
                connection,
            },
            closed_idle,
        }
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().len()
    }
}

impl Registration {
    /// Marks a request in service until the guard is dropped.
    pub fn request_started(&self) -> InService {
        let connection = self.connection.clone();
        connection.in_service.fetch_add(1, Ordering::AcqRel);
        connection.served.store(true, Ordering::Relaxed);
        connection
            .last_active_ms
            .store(self.connections.now_ms(), Ordering::Relaxed);
        InService {
            connection,
            connections: self.connections.clone(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.table().remove(&self.connection.id);
    }
}

/// A request in service on a connection.
pub struct InService {
    connection: Arc<Connection>,
    connections: Arc<Connections>,
}

impl Drop for InService {
    fn drop(&mut self) {
        self.connection
            .last_active_ms
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.connection.in_service.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> (Registration, bool) {
        match admission {
            Admission::Admitted {
                registration,
                closed_idle,
            } => (registration, closed_idle),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn a_full_house_closes_the_idlest_connection_and_never_a_busy_one() {
        let connections = Connections::new(2);
        let (first, closed) = admitted(connections.admit());
        assert!(!closed);
        let (second, _) = admitted(connections.admit());
        let busy = first.request_started();
        // Full: the second is idle, so it gives way.
        let (third, closed) = admitted(connections.admit());
        assert!(closed);
        assert!(second.connection.close.is_cancelled());
        assert!(!first.connection.close.is_cancelled());
        assert_eq!(connections.len(), 2);
        // Both serving a request: the next is refused.
        let _also_busy = third.request_started();
        assert!(matches!(connections.admit(), Admission::Refused));
        drop(busy);
        let (_fourth, closed) = admitted(connections.admit());
        assert!(closed && first.connection.close.is_cancelled());
        drop(second);
        assert_eq!(
            connections.len(),
            2,
            "a closed one's late drop frees nothing twice"
        );
    }

    #[test]
    fn a_connection_that_never_sent_a_request_gives_way_before_a_served_one() {
        let connections = Connections::new(2);
        let (served, _) = admitted(connections.admit());
        drop(served.request_started());
        // Opened later, so idle for less time, but it never sent a request.
        let (silent, _) = admitted(connections.admit());
        let (_third, closed) = admitted(connections.admit());
        assert!(closed);
        assert!(silent.connection.close.is_cancelled());
        assert!(!served.connection.close.is_cancelled());
    }
}
