//! Role machine tests on a virtual clock.

use super::*;

const KA: Duration = Duration::from_millis(200);

fn settings(home: HomeRole) -> Settings {
    Settings {
        keepalive: KA,
        missed: 3,
        probe_timeout: Duration::from_millis(200),
        home,
        witnesses: false,
        preempt_after: None,
    }
}

/// Every action; epoch writes succeed at once (see `slow_or_failing_epoch_writes` for the
/// others).
fn drain(m: &mut RoleMachine) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(a) = m.poll_action() {
        if let Action::PersistEpoch { epoch } = a {
            m.on_epoch_persisted(Instant::now(), epoch, Ok(()));
            continue;
        }
        out.push(a);
    }
    out
}

/// The disk confirms the pending epoch write (leaves the queued actions alone).
fn confirm(m: &mut RoleMachine) {
    if let Some(e) = m.persisting_epoch() {
        m.on_epoch_persisted(Instant::now(), e, Ok(()));
    }
}

fn hear(m: &mut RoleMachine, now: Instant, role: Announced, epoch: u64) {
    m.on_keepalive(now, "peer", role, epoch, 0, "cfg", None);
}

/// A stand-by past start-up, with an active peer at epoch 1.
fn running_standby(t0: Instant) -> RoleMachine {
    running_standby_with(settings(HomeRole::Standby), t0)
}

fn running_standby_with(s: Settings, t0: Instant) -> RoleMachine {
    let mut m = RoleMachine::new(s, 1, t0);
    hear(&mut m, t0, Announced::Active, 1);
    m.handle_timeout(t0);
    drain(&mut m);
    m
}

/// Run from `from` to `to` in 10 ms steps, delivering an active keep-alive every `every`.
fn run(
    m: &mut RoleMachine,
    from: Instant,
    to: Instant,
    every: Option<Duration>,
) -> Vec<(u128, Action)> {
    let mut out = Vec::new();
    let mut t = from;
    let mut next_ka = from;
    while t <= to {
        if let Some(e) = every
            && t >= next_ka
        {
            hear(m, t, Announced::Active, 1);
            next_ka += e;
        }
        if m.poll_timeout() <= t {
            m.handle_timeout(t);
        }
        for a in drain(m) {
            out.push(((t - from).as_millis(), a));
        }
        t += Duration::from_millis(10);
    }
    out
}

fn takeovers(a: &[(u128, Action)]) -> Vec<u128> {
    a.iter()
        .filter(|(_, a)| matches!(a, Action::BecomeActive { .. }))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn no_missed_keepalives_no_takeover() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    let a = run(&mut m, t0, t0 + Duration::from_secs(10), Some(KA));
    assert!(takeovers(&a).is_empty());
    assert!(!a.iter().any(|(_, a)| *a == Action::SendProbe));
    assert_eq!(m.role(), Role::Standby);
}

#[test]
fn exactly_n_missed_then_failed_probe_takes_over() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    // Keep-alives stop after t0. Intervals end at 200, 400, 600 ms: the third miss sends the
    // probe at 600 ms; no answer by 800 ms: takeover.
    let a = run(&mut m, t0, t0 + Duration::from_secs(2), None);
    let probes: Vec<_> = a
        .iter()
        .filter(|(_, a)| *a == Action::SendProbe)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(probes, [600]);
    assert_eq!(takeovers(&a), [800]);
    assert!(a.iter().any(|(_, a)| *a
        == Action::BecomeActive {
            epoch: 2,
            reason: TakeoverReason::PeerSilent
        }));
    assert_eq!(m.role(), Role::Active);
    assert_eq!(m.epoch(), 2);
}

#[test]
fn two_missed_is_not_enough() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    // Slow by less than one interval: keep-alives every 390 ms still land in every other
    // interval, never three misses in a row.
    let a = run(
        &mut m,
        t0,
        t0 + Duration::from_secs(5),
        Some(Duration::from_millis(390)),
    );
    assert!(takeovers(&a).is_empty());
    assert!(!a.iter().any(|(_, a)| *a == Action::SendProbe));
}

#[test]
fn n_missed_but_probe_answered_no_takeover_and_a_warning() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    let a = run(&mut m, t0, t0 + Duration::from_millis(600), None);
    assert!(a.iter().any(|(_, a)| *a == Action::SendProbe));
    m.on_probe_answer(
        t0 + Duration::from_millis(650),
        "peer",
        Announced::Active,
        1,
    );
    let rest = drain(&mut m);
    assert!(
        rest.iter()
            .any(|a| matches!(a, Action::Warn(w) if w.contains("answered the probe")))
    );
    let a = run(
        &mut m,
        t0 + Duration::from_millis(660),
        t0 + Duration::from_millis(900),
        Some(KA),
    );
    assert!(takeovers(&a).is_empty());
    assert_eq!(m.role(), Role::Standby);
}

/// The active crashed and came back at once as stand-by (systemd restarted it) before the
/// stand-by missed its keep-alives: it answers the probe, but as a stand-by. Nobody is
/// active, so the stand-by (which holds the digest of the calls) takes over.
#[test]
fn a_probe_answered_by_a_standby_means_nobody_is_active_so_take_over() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    let a = run(&mut m, t0, t0 + Duration::from_millis(600), None);
    assert!(a.iter().any(|(_, a)| *a == Action::SendProbe));
    m.on_probe_answer(
        t0 + Duration::from_millis(650),
        "peer",
        Announced::Standby,
        1,
    );
    let rest = drain(&mut m);
    assert!(
        rest.iter()
            .any(|a| matches!(a, Action::PersistEpoch { .. } | Action::BecomeActive { .. })),
        "no takeover: {rest:?}"
    );
}

#[test]
fn handover_makes_the_standby_take_over_at_once() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    hear(
        &mut m,
        t0 + Duration::from_millis(50),
        Announced::Handover,
        4,
    );
    let a = drain(&mut m);
    assert_eq!(
        a,
        [Action::BecomeActive {
            epoch: 5,
            reason: TakeoverReason::Handover
        }]
    );
}

#[test]
fn active_hands_over_and_steps_down_when_peer_is_active_with_higher_epoch() {
    let t0 = Instant::now();
    let mut m = RoleMachine::new(settings(HomeRole::Main), 3, t0);
    m.handle_timeout(t0 + Duration::from_millis(800));
    confirm(&mut m);
    assert_eq!(m.role(), Role::Active);
    assert_eq!(m.epoch(), 4);
    drain(&mut m);
    let t = t0 + Duration::from_secs(1);
    hear(&mut m, t, Announced::Standby, 4);
    m.request_switchover(t).unwrap();
    assert!(!m.accepts_calls(), "no new calls while handing over");
    assert_eq!(drain(&mut m), [Action::SendKeepalive(Announced::Handover)]);
    hear(&mut m, t + Duration::from_millis(5), Announced::Active, 5);
    assert_eq!(
        drain(&mut m),
        [Action::StepDown(StepDownReason::HandedOver)]
    );
    assert_eq!(m.role(), Role::Standby);
}

#[test]
fn switchover_without_a_live_peer_is_refused() {
    let t0 = Instant::now();
    let mut m = RoleMachine::new(settings(HomeRole::Main), 1, t0);
    m.handle_timeout(t0 + Duration::from_millis(800));
    confirm(&mut m);
    assert!(m.request_switchover(t0 + Duration::from_secs(1)).is_err());
    assert_eq!(m.role(), Role::Active);
}

#[test]
fn higher_epoch_seen_steps_down() {
    let t0 = Instant::now();
    let mut m = RoleMachine::new(settings(HomeRole::Main), 1, t0);
    m.handle_timeout(t0 + Duration::from_millis(800));
    drain(&mut m);
    hear(&mut m, t0 + Duration::from_secs(1), Announced::Active, 7);
    assert_eq!(
        drain(&mut m),
        [Action::StepDown(StepDownReason::HigherEpoch)]
    );
    // a lower epoch does not make us step down
    let mut m = RoleMachine::new(settings(HomeRole::Standby), 5, t0);
    m.request_switchover(t0).unwrap();
    drain(&mut m);
    hear(&mut m, t0 + Duration::from_millis(10), Announced::Active, 2);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.role(), Role::Active);
}

#[test]
fn tie_home_main_wins() {
    let t0 = Instant::now();
    for (home, stays) in [(HomeRole::Main, true), (HomeRole::Standby, false)] {
        let mut m = RoleMachine::new(settings(home), 2, t0);
        m.request_switchover(t0).unwrap(); // standby → active at epoch 3
        drain(&mut m);
        hear(&mut m, t0 + Duration::from_millis(10), Announced::Active, 3);
        assert_eq!(m.role() == Role::Active, stays, "{home:?}");
    }
}

#[test]
fn startup_main_without_peer_becomes_active_standby_waits() {
    let t0 = Instant::now();
    let mut m = RoleMachine::new(settings(HomeRole::Main), 0, t0);
    m.handle_timeout(t0 + Duration::from_millis(790));
    assert_eq!(m.role(), Role::Standby);
    m.handle_timeout(t0 + Duration::from_millis(800));
    assert_eq!(m.role(), Role::TakingOver);
    confirm(&mut m);
    assert_eq!(m.role(), Role::Active);
    let mut s = RoleMachine::new(settings(HomeRole::Standby), 0, t0);
    s.handle_timeout(t0 + Duration::from_millis(800));
    assert_eq!(
        s.role(),
        Role::Standby,
        "a home stand-by never takes over at start-up"
    );
}

#[test]
fn startup_main_seeing_an_active_peer_stays_standby() {
    let t0 = Instant::now();
    let mut m = RoleMachine::new(settings(HomeRole::Main), 1, t0);
    hear(
        &mut m,
        t0 + Duration::from_millis(100),
        Announced::Active,
        2,
    );
    let a = run(&mut m, t0, t0 + Duration::from_secs(3), Some(KA));
    assert!(takeovers(&a).is_empty());
    assert_eq!(m.role(), Role::Standby);
}

#[test]
fn keepalives_are_sent_every_interval_with_the_role() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    let a = run(&mut m, t0, t0 + Duration::from_millis(1000), Some(KA));
    let sent: Vec<_> = a
        .iter()
        .filter(|(_, a)| matches!(a, Action::SendKeepalive(Announced::Standby)))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(sent, [200, 400, 600, 800, 1000]);
}

#[test]
fn witnesses_gate_the_takeover() {
    let t0 = Instant::now();
    let mut s = settings(HomeRole::Standby);
    s.witnesses = true;
    let mut m = RoleMachine::new(s.clone(), 1, t0);
    hear(&mut m, t0, Announced::Active, 1);
    m.handle_timeout(t0);
    drain(&mut m);
    // Probe at 600 ms fails at 800 ms: ping witnesses; nobody answers by 1000 ms: isolated.
    let a = run(&mut m, t0, t0 + Duration::from_millis(1000), None);
    assert!(
        a.iter()
            .any(|(t, a)| *t == 800 && *a == Action::PingWitnesses)
    );
    assert!(takeovers(&a).is_empty());
    assert!(m.isolated);
    assert_eq!(m.role(), Role::Standby);
    // Next round a witness answers: takeover.
    let a = run(
        &mut m,
        t0 + Duration::from_millis(1010),
        t0 + Duration::from_millis(1900),
        None,
    );
    assert!(a.iter().any(|(_, a)| *a == Action::PingWitnesses));
    m.on_witness_answer();
    confirm(&mut m);
    assert_eq!(m.role(), Role::Active);
    assert!(!m.isolated);
}

#[test]
fn preempt_brings_the_home_main_back_after_stable_keepalives() {
    let t0 = Instant::now();
    let mut s = settings(HomeRole::Main);
    s.preempt_after = Some(Duration::from_secs(5));
    let mut m = RoleMachine::new(s, 1, t0);
    // Restarted main: it sees the stand-by active at epoch 2 and stays stand-by ...
    hear(
        &mut m,
        t0 + Duration::from_millis(100),
        Announced::Active,
        2,
    );
    let mut t = t0;
    let mut acts = Vec::new();
    while t <= t0 + Duration::from_millis(4900) {
        hear(&mut m, t, Announced::Active, 2);
        if m.poll_timeout() <= t {
            m.handle_timeout(t);
        }
        acts.extend(drain(&mut m));
        t += Duration::from_millis(200);
    }
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::BecomeActive { .. })),
        "{acts:?}"
    );
    // ... until 5 s of uninterrupted keep-alives: then it takes its role back.
    while t <= t0 + Duration::from_millis(5400) {
        hear(&mut m, t, Announced::Active, 2);
        if m.poll_timeout() <= t {
            m.handle_timeout(t);
        }
        acts.extend(drain(&mut m));
        t += Duration::from_millis(200);
    }
    assert!(
        acts.contains(&Action::BecomeActive {
            epoch: 3,
            reason: TakeoverReason::Preempt
        }),
        "{acts:?}"
    );
    // A home stand-by never preempts.
    let mut s = settings(HomeRole::Standby);
    s.preempt_after = Some(Duration::from_secs(1));
    let mut m = running_standby_with(s, t0);
    let a = run(&mut m, t0, t0 + Duration::from_secs(3), Some(KA));
    assert!(takeovers(&a).is_empty());
}

#[test]
fn a_stalled_node_sends_one_keepalive_not_one_per_missed_tick() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    drain(&mut m);
    // The process was frozen for a second: five ticks went by.
    let t = t0 + Duration::from_secs(1);
    hear(&mut m, t, Announced::Active, 1);
    m.handle_timeout(t);
    let sent = drain(&mut m)
        .into_iter()
        .filter(|a| matches!(a, Action::SendKeepalive(_)))
        .count();
    assert_eq!(sent, 1);
    assert_eq!(m.poll_timeout(), t + KA, "the schedule restarts from now");
}

#[test]
fn a_node_whose_epoch_write_fails_stays_standby_and_says_why() {
    let t0 = Instant::now();
    let mut m = running_standby(t0);
    m.request_switchover(t0).expect("switchover");
    assert_eq!(m.poll_action(), Some(Action::PersistEpoch { epoch: 2 }));
    assert_eq!(m.role(), Role::TakingOver);
    assert!(!m.accepts_calls(), "no calls before the epoch is durable");
    assert_eq!(m.announced(), Announced::Standby);
    m.on_epoch_persisted(t0, 2, Err("disk full".into()));
    assert_eq!(m.role(), Role::Standby);
    assert_eq!(m.epoch(), 1);
    let acts: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Warn(w) if w.contains("disk full"))),
        "{acts:?}"
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::BecomeActive { .. }))
    );
    // A slow write: active only once it is durable.
    m.request_switchover(t0).expect("again");
    assert_eq!(m.poll_action(), Some(Action::PersistEpoch { epoch: 2 }));
    m.handle_timeout(t0 + KA * 5);
    assert_eq!(m.role(), Role::TakingOver);
    m.on_epoch_persisted(t0 + KA * 5, 2, Ok(()));
    assert_eq!(m.role(), Role::Active);
    assert!(m.accepts_calls());
}

#[test]
fn a_takeover_still_being_written_yields_to_a_peer_that_would_win() {
    // Found by the simulator (seed 3315): the main restarted and took over at start-up
    // while the stand-by's own takeover waited on a slow disk at the same epoch; the
    // stand-by then re-bound the live main's calls before losing the tie.
    let t0 = Instant::now();
    for (peer_epoch, home, yields) in [
        (2, HomeRole::Standby, true),
        (3, HomeRole::Main, true),
        (2, HomeRole::Main, false),
        (1, HomeRole::Standby, false),
    ] {
        let mut m = running_standby_with(settings(home), t0);
        m.request_switchover(t0).unwrap();
        assert_eq!(m.persisting_epoch(), Some(2));
        let t1 = t0 + Duration::from_millis(50);
        hear(&mut m, t1, Announced::Active, peer_epoch);
        let a = drain(&mut m);
        if yields {
            assert_eq!(
                m.role(),
                Role::Standby,
                "peer at {peer_epoch}, home {home:?}"
            );
            assert_eq!(m.epoch(), 1);
            m.on_epoch_persisted(t1, 2, Ok(()));
            assert_eq!(m.role(), Role::Standby, "the late write changes nothing");
            assert!(a.iter().any(|a| matches!(a, Action::Warn(_))));
        } else {
            assert_eq!(
                m.role(),
                Role::Active,
                "peer at {peer_epoch}, home {home:?}"
            );
        }
    }
}

/// Only a stand-by heard lately reads the digest: not the main this node took over from, even
/// while its last keep-alives are still arriving, and not a stand-by gone silent.
#[test]
fn only_a_standby_heard_lately_reads_the_digest() {
    let t0 = Instant::now();
    let window = Duration::from_secs(5);
    let mut m = running_standby(t0);
    assert!(!m.standby_listening(t0, window), "the peer is the active");
    hear(&mut m, t0 + KA, Announced::Active, 1);
    assert!(!m.standby_listening(t0 + KA, window), "still the active");
    hear(&mut m, t0 + KA * 2, Announced::Standby, 1);
    assert!(m.standby_listening(t0 + KA * 2, window));
    assert!(
        !m.standby_listening(t0 + KA * 2 + window + KA, window),
        "silent for too long"
    );
}
