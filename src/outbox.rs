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

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytestring::ByteString;
use tokio::sync::{Notify, mpsc};

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

/// The sending side, held by the state actor (clones push into the same queue).
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    /// Woken whenever the writer frees bytes.
    room: Arc<Notify>,
    max_bytes: usize,
}

/// The receiving side, held by the session's task.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    room: Arc<Notify>,
}

/// A queue that holds at most `max_bytes` of frames (a single larger batch is let through when
/// the queue is empty, so one big snapshot can always be sent).
pub fn outbox(max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let room = Arc::new(Notify::new());
    (
        Outbox { tx, queued: Arc::clone(&queued), room: Arc::clone(&room), max_bytes },
        OutboxReceiver { rx, queued, room },
    )
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
        self.tx.send(item).map_err(|_| PushError::Closed)
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
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.tx.is_closed() {
                return Err(PushError::Closed);
            }
            let queued = self.queued.load(Ordering::Acquire);
            if queued == 0 || queued + bytes <= limit {
                if self.queued.compare_exchange(queued, queued + bytes, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return self.tx.send(item).map_err(|_| PushError::Closed);
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
    /// The next item; `None` once the state actor dropped the sender.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// The next item if one is queued already (for writing several in one go).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// A batch of `bytes` has been handed to the socket: they no longer count.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.room.notify_waiters();
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
    async fn one_oversized_batch_passes_an_empty_queue() {
        let (tx, rx) = outbox(10);
        tx.push(batch(1000)).unwrap();
        assert_eq!(tx.push(batch(1)), Err(PushError::Full));
        drop(rx);
        assert_eq!(tx.push(Outbound::Close(close::NORMAL, "")), Err(PushError::Closed));
    }
}
