//! Bounds on what clients can make the server hold: the bytes of request bodies in memory at
//! once ([`BodyBudget`]) and the connections open at once ([`BoundedListener`]).
//!
//! Without them memory grows with the number of clients: 48 concurrent 19 MB bodies took the
//! server from 62 to 885 MB (issue 41). A request that does not fit the body budget gets 503
//! with `Retry-After` (routes.rs); a connection over the bound waits in the kernel's accept
//! queue until one closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB: one acquisition takes at most `u32::MAX` permits.
const UNIT: usize = 1024;

/// The bytes of request bodies the server may hold at once.
#[derive(Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// An empty reservation, to [`Reservation::cover`] a body as it arrives.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            permits: self.permits.clone(),
            held: None,
            units: 0,
        }
    }

    /// Bytes reserved by the requests in flight (a multiple of 1 KiB).
    pub fn held(&self) -> usize {
        (self.total - self.permits.available_permits()) * UNIT
    }
}

/// Part of the budget, given back when dropped (when the request's bytes are freed).
#[derive(Debug)]
pub struct Reservation {
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Reservation {
    /// Make this reservation cover `bytes` in all, now or never: false (and unchanged) when the
    /// budget has no room for the difference. Never waits: a server whose budget is spent
    /// answers 503 at once, so that clients back off instead of piling up connections.
    pub fn cover(&mut self, bytes: usize) -> bool {
        let units = bytes.div_ceil(UNIT);
        let Some(more) = units.checked_sub(self.units).filter(|&n| n > 0) else {
            return true;
        };
        let Ok(more_u32) = u32::try_from(more) else {
            return false;
        };
        let Ok(permit) = self.permits.clone().try_acquire_many_owned(more_u32) else {
            return false;
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.units = units;
        true
    }
}

/// A TCP listener that holds at most `max` connections open: at the bound, it accepts the
/// next one only when one closes (the rest wait in the kernel's backlog).
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
}

impl BoundedListener {
    pub fn new(inner: TcpListener, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A handle that tells how many connections are open.
    pub fn gauge(&self) -> OpenConnections {
        OpenConnections {
            slots: self.slots.clone(),
            max: self.max,
        }
    }
}

/// How many connections a [`BoundedListener`] holds open now.
#[derive(Debug, Clone)]
pub struct OpenConnections {
    slots: Arc<Semaphore>,
    max: usize,
}

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        // The semaphore is never closed, so this always gets a slot.
        let slot = self.slots.clone().acquire_owned().await.ok();
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            Counted {
                stream,
                _slot: slot,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its slot back when closed.
pub struct Counted {
    stream: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_within_the_budget_and_give_it_back_when_dropped() {
        let budget = BodyBudget::new(10 * 1024);
        let mut a = budget.reservation();
        assert!(a.cover(6000)); // 6 KiB
        assert!(a.cover(3000)); // already covered
        assert_eq!(budget.held(), 6 * 1024);
        let mut b = budget.reservation();
        assert!(!b.cover(5 * 1024)); // 4 KiB left
        assert!(b.cover(4 * 1024));
        assert!(!a.cover(6 * 1024 + 1));
        assert_eq!(budget.held(), 10 * 1024);
        drop(a);
        assert_eq!(budget.held(), 4 * 1024);
        assert!(b.cover(10 * 1024));
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
