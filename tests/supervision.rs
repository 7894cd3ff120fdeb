//! Supervision: a panic ends the relay process (the service manager restarts it and boot replays
//! the ledger) instead of leaving it serving with a dead actor, as actix would.
//!
//! There is no way to make the release binary panic on purpose (and none is added for tests), so
//! the panic is raised here, in a child process that runs the relay's own hook
//! (`relay::abort_on_panic`, installed by `relay::run`) around a panicking actix actor; the real
//! binary is checked to install it.

mod common;

use std::{os::unix::process::ExitStatusExt, process::Command};

use actix::prelude::*;

const CHILD: &str = "AETHER_TEST_PANIC_CHILD";

struct Doomed;

impl Actor for Doomed {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Explode;

impl Handler<Explode> for Doomed {
    type Result = ();

    fn handle(&mut self, _: Explode, _: &mut Context<Self>) {
        panic!("an actor panicked on purpose");
    }
}

/// In the child: an actor on its own arbiter (as the relay starts its singletons) panics.
fn child(with_hook: bool) {
    if with_hook {
        aether_actix::relay::abort_on_panic();
    }
    actix::System::new().block_on(async {
        let addr = Doomed::start_in_arbiter(&Arbiter::new().handle(), |_| Doomed);
        let reply = addr.send(Explode).await;
        println!("STILL RUNNING after the actor panicked; its mailbox says {reply:?}");
    });
}

fn run_child(test: &str, mode: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap()
}

#[test]
fn a_panic_in_an_actor_ends_the_process() {
    match std::env::var(CHILD).as_deref() {
        Ok("hook") => return child(true),
        Ok("bare") => return child(false),
        _ => {}
    }
    let test = "a_panic_in_an_actor_ends_the_process";
    // What actix does by itself: the process carries on without the actor.
    let bare = run_child(test, "bare");
    assert!(String::from_utf8_lossy(&bare.stdout).contains("STILL RUNNING"), "{bare:?}");
    // With the relay's hook: the process ends, by SIGABRT, before anything else runs.
    let hooked = run_child(test, "hook");
    let (stdout, stderr) = (String::from_utf8_lossy(&hooked.stdout), String::from_utf8_lossy(&hooked.stderr));
    assert_eq!(hooked.status.signal(), Some(libc::SIGABRT), "{hooked:?}");
    assert!(!hooked.status.success());
    assert!(!stdout.contains("STILL RUNNING"), "{stdout}");
    assert!(stderr.contains("an actor panicked on purpose") && stderr.contains("aborting after a panic"), "{stderr}");
}

#[test]
fn the_relay_says_a_panic_aborts() {
    let server = common::Server::start("");
    common::wait_until("the start log", || server.log().contains("on panic: abort"));
}
