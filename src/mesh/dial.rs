//! Diallers: one task per `[mesh] peers` URL, redialling with exponential backoff and jitter for
//! as long as the relay runs.

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::Addr;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    ALREADY_LINKED, IsStopping, MeshActor, MeshSettings, SELF_DIAL, STABLE_LINK,
    link::{self, Ended},
    shared::Shared,
    transport::Dialer,
};

/// Dials `url` for as long as the relay runs: connect, handshake, run the link; after it ends,
/// wait (exponential backoff with jitter, reset by every link that came up) and dial again.
pub(super) async fn dial_forever(
    shared: Arc<Shared>,
    settings: Arc<MeshSettings>,
    mesh: Addr<MeshActor>,
    dialer: Rc<Dialer>,
    url: String,
    link_down: Arc<Notify>,
) {
    let mut delay = settings.redial_min;
    let mut failures: u64 = 0;
    for attempt in 0u64.. {
        if mesh.send(IsStopping).await.unwrap_or(true) {
            return;
        }
        if attempt > 0 {
            shared.metrics.mesh.redial(&url);
        }
        let down = link_down.notified();
        tokio::pin!(down);
        down.as_mut().enable();
        let began = Instant::now();
        let outcome = match dialer.connect(&url).await {
            Err(err) => Err(err),
            Ok((mut reader, mut writer)) => match shared.dial(&mut reader, &mut writer).await {
                Err(err) => {
                    if let Some((code, reason)) = err.close {
                        writer.close(code, reason).await;
                    }
                    Err(err.why)
                }
                Ok(peer) => {
                    Ok(link::run(Arc::clone(&shared), mesh.clone(), peer, reader, writer, true, url.clone()).await)
                }
            },
        };
        match outcome {
            // A link that lasted resets the backoff; one closed at once (refused by the peer)
            // counts as a failure, so a peer that keeps refusing is not hammered.
            Ok(Ended::Ran(_)) if began.elapsed() >= STABLE_LINK => {
                delay = settings.redial_min;
                failures = 0;
            }
            Ok(Ended::Refused(r)) if r == SELF_DIAL => {
                log::warn!("mesh: {url} leads back to this relay; not dialling it again");
                return;
            }
            Ok(Ended::Refused(r)) if r == ALREADY_LINKED => {
                // Linked by another way already: wait for some link to drop, then check again.
                tokio::select! {
                    () = &mut down => {}
                    () = tokio::time::sleep(settings.redial_max) => {}
                }
                continue;
            }
            Ok(Ended::Refused(_) | Ended::Ran(_)) | Err(_) => {
                failures += 1;
                if let Err(why) = &outcome
                    && failures.is_power_of_two()
                {
                    log::warn!("mesh: cannot link to {url} ({failures} attempts): {why}");
                }
                delay = (delay * 2).min(settings.redial_max);
            }
        }
        tokio::time::sleep(jitter(delay)).await;
    }
}

/// `delay` scaled by a random factor in [0.5, 1], so peers that lost a link together do not
/// redial in lockstep.
fn jitter(delay: Duration) -> Duration {
    let random = (Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    delay.mul_f64(0.5 + random / 2.0)
}
