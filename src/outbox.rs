//! A connection's outbound queue, bounded in bytes.
//!
//! The state actor pushes shared frame batches without waiting; the session's task pops and
//! writes them to its socket. Queued bytes are counted: a push that would take a non-empty queue
//! past its limit fails, and the caller closes that connection as too slow. Counting bytes rather
//! than batches keeps the bound meaningful whether a batch carries one small frame or thousands.
//!
//! A sender that can wait (a peer link's anti-entropy, which may have a whole state to send) uses
//! [`Outbox::push_within`] instead: it waits until the writer has made room, and takes only part of
//! the queue, so pushes that cannot wait (live gossip, broadcasts) keep theirs.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Poll, Waker},
};

use bytestring::ByteString;
use tokio::sync::Notify;

/// What a session's task sends to its socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Text frames shared with every other member (one allocation per broadcast, not per member).
    Frames {
        /// The frames, in order.
        frames: Arc<[ByteString]>,
        /// Their total length, as counted against the queue's limit.
        bytes: usize,
    },
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

impl Outbound {
    /// A batch of frames, its size computed once.
    pub fn frames(frames: Arc<[ByteString]>) -> Self {
        let bytes = frames.iter().map(|f| f.len()).sum();
        Outbound::Frames { frames, bytes }
    }
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its limit already: the reader is too slow.
    Full,
    /// The session ended.
    Closed,
}

/// The queue itself, shared by the senders and the receiver.
///
/// One allocation per connection (plus the deque's buffer, sized by what is queued), not a
/// tokio channel: an unbounded tokio channel allocates its shared part (about 400 bytes, padded
/// to cache lines) and a first block of 32 slots (about 800 bytes) for every connection, which
/// was about a twentieth of an idle connection's memory (benches/README.md, "Dense
/// connections"). The lock is held only to push or pop an item; the one receiver is woken only
/// when it waits.
#[derive(Debug, Default)]
struct Chan {
    inner: Mutex<Inner>,
    /// Woken whenever the writer frees bytes, and when the receiver goes.
    room: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    /// The receiver, when it waits for an item.
    waker: Option<Waker>,
    /// Live senders: at zero, the receiver gets `None` once the queue is empty.
    senders: usize,
    /// The receiver was dropped: pushes fail.
    closed: bool,
}

impl Inner {
    /// The next item; a queue that grew under a burst gives its memory back once it is empty
    /// (an idle connection keeps a few slots, not the high-water mark).
    fn pop(&mut self) -> Option<Outbound> {
        let item = self.items.pop_front()?;
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
        Some(item)
    }
}

impl Chan {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` and wakes the receiver if it waits; `Err` when it is gone.
    fn send(&self, item: Outbound) -> Result<(), PushError> {
        let waker = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(PushError::Closed);
            }
            inner.items.push_back(item);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// The sending side, held by the state actor (clones push into the same queue).
#[derive(Debug)]
pub struct Outbox {
    chan: Arc<Chan>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.chan.lock().senders += 1;
        Outbox { chan: Arc::clone(&self.chan), queued: Arc::clone(&self.queued), max_bytes: self.max_bytes }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.chan.lock();
            inner.senders -= 1;
            if inner.senders > 0 { None } else { inner.waker.take() }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The receiving side, held by the session's task.
#[derive(Debug)]
pub struct OutboxReceiver {
    chan: Arc<Chan>,
    queued: Arc<AtomicUsize>,
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let items = {
            let mut inner = self.chan.lock();
            inner.closed = true;
            inner.waker = None;
            std::mem::take(&mut inner.items)
        };
        // Frames are freed outside the lock; a patient sender learns the reader is gone.
        drop(items);
        self.chan.room.notify_waiters();
    }
}

/// A queue that holds at most `max_bytes` of frames (a single larger batch is let through when
/// the queue is empty, so one big snapshot can always be sent).
pub fn outbox(max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let chan = Arc::new(Chan::default());
    chan.lock().senders = 1;
    let queued = Arc::new(AtomicUsize::new(0));
    (Outbox { chan: Arc::clone(&chan), queued: Arc::clone(&queued), max_bytes }, OutboxReceiver { chan, queued })
}

impl Outbox {
    /// Queues `item` unless that would exceed the limit.
    ///
    /// # Errors
    /// [`PushError::Full`] when the reader is too far behind, [`PushError::Closed`] when it is gone.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        if let Outbound::Frames { bytes, .. } = &item {
            let before = self.queued.fetch_add(*bytes, Ordering::AcqRel);
            if before > 0 && before + bytes > self.max_bytes {
                self.queued.fetch_sub(*bytes, Ordering::AcqRel);
                return Err(PushError::Full);
            }
        }
        self.chan.send(item)
    }

    /// Queues `item` once the queue holds no more than `limit` bytes with it (or nothing at all,
    /// so an item larger than `limit` still goes, alone), waiting meanwhile for the writer to free
    /// bytes. With `limit` below the queue's own bound, what this sender queues never crowds out
    /// [`Outbox::push`]es. Cancel-safe: dropping the future queues nothing.
    ///
    /// # Errors
    /// [`PushError::Closed`] when the reader is gone (checked before each wait).
    pub async fn push_within(&self, item: Outbound, limit: usize) -> Result<(), PushError> {
        let Outbound::Frames { bytes, .. } = &item else { return self.push(item) };
        let bytes = *bytes;
        loop {
            let freed = self.chan.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.chan.lock().closed {
                return Err(PushError::Closed);
            }
            let queued = self.queued.load(Ordering::Acquire);
            if queued == 0 || queued + bytes <= limit {
                if self.queued.compare_exchange(queued, queued + bytes, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return self.chan.send(item);
                }
                continue; // another push came in between: look again
            }
            freed.await;
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The live counter behind [`Outbox::queued`], for metrics.
    pub fn gauge(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.queued)
    }
}

impl OutboxReceiver {
    /// The next item; `None` once every sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut inner = self.chan.lock();
            if let Some(item) = inner.pop() {
                return Poll::Ready(Some(item));
            }
            if inner.senders == 0 {
                return Poll::Ready(None);
            }
            match &mut inner.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued already (for writing several in one go).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.chan.lock().pop()
    }

    /// A batch of `bytes` has been handed to the socket: they no longer count.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.chan.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close;

    fn batch(len: usize) -> Outbound {
        Outbound::frames(Arc::new([ByteString::from("x".repeat(len))]))
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_freed_as_written() {
        let (tx, mut rx) = outbox(100);
        tx.push(batch(60)).unwrap();
        tx.push(batch(40)).unwrap();
        assert_eq!(tx.push(batch(1)), Err(PushError::Full));
        let Some(Outbound::Frames { bytes, .. }) = rx.recv().await else { panic!("a batch") };
        rx.written(bytes);
        assert_eq!(tx.queued(), 40);
        tx.push(batch(60)).unwrap();
        // Close frames are never refused.
        tx.push(Outbound::Close(close::GOING_AWAY, "bye")).unwrap();
    }

    #[tokio::test]
    async fn a_patient_push_waits_for_room_and_keeps_within_its_share() {
        let (tx, mut rx) = outbox(100);
        tx.push(batch(30)).unwrap();
        // Room within a share of 50: goes at once.
        tx.push_within(batch(20), 50).await.unwrap();
        // 50 queued: a further 20 would pass the share, so it waits for the writer.
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.push_within(batch(20), 50).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(tx.queued(), 50);
        // Pushes that cannot wait still have the rest of the queue.
        tx.push(batch(50)).unwrap();
        for expected in [30, 20, 50] {
            let Some(Outbound::Frames { bytes, .. }) = rx.recv().await else { panic!("a batch") };
            assert_eq!(bytes, expected);
            rx.written(bytes);
        }
        waiting.await.unwrap().unwrap();
        assert_eq!(tx.queued(), 20);
        // Larger than the share: waits for an empty queue, then goes alone.
        let Some(Outbound::Frames { bytes, .. }) = rx.recv().await else { panic!("a batch") };
        rx.written(bytes);
        tx.push_within(batch(80), 50).await.unwrap();
        drop(rx);
        assert_eq!(tx.push_within(batch(1), 50).await, Err(PushError::Closed));
    }

    #[tokio::test]
    async fn the_receiver_is_woken_by_a_push_and_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = outbox(100);
        let other = tx.clone();
        let reader = tokio::spawn(async move { (rx.recv().await.is_some(), rx.recv().await.is_none()) });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "nothing queued yet");
        other.push(batch(1)).unwrap();
        drop(other);
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "one sender is left");
        drop(tx);
        assert_eq!(reader.await.unwrap(), (true, true));
    }

    #[tokio::test]
    async fn a_patient_push_learns_that_the_reader_went() {
        let (tx, rx) = outbox(100);
        tx.push(batch(100)).unwrap();
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.push_within(batch(10), 50).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_what_a_burst_grew() {
        let (tx, mut rx) = outbox(1 << 20);
        for _ in 0..1000 {
            tx.push(batch(1)).unwrap();
        }
        for _ in 0..1000 {
            assert!(rx.try_recv().is_some());
        }
        assert!(rx.try_recv().is_none());
        assert!(rx.chan.lock().items.capacity() <= 64);
    }

    #[tokio::test]
    async fn one_oversized_batch_passes_an_empty_queue() {
        let (tx, rx) = outbox(10);
        tx.push(batch(1000)).unwrap();
        assert_eq!(tx.push(batch(1)), Err(PushError::Full));
        drop(rx);
        assert_eq!(tx.push(Outbound::Close(close::NORMAL, "")), Err(PushError::Closed));
    }
}
