//! The role machine of the pair (DESIGN "Roles and epochs", seed steps 204–208): keep-alive
//! schedule, the stand-by's miss counter, the direct probe, takeover, handover, fencing by
//! epoch and the tie rule. Sans-IO: keep-alives in, clock readings in, actions out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::HomeRole;

/// What a node does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Watching the active peer.
    Standby,
    /// Raising the epoch and becoming active.
    TakingOver,
    /// Handling calls.
    Active,
}

/// The role a keep-alive announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// `active`
    Active,
    /// `standby`
    Standby,
    /// `handover`: the active asks the stand-by to take over now.
    Handover,
}

impl Announced {
    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Standby => "standby",
            Self::Handover => "handover",
        }
    }

    /// Parse a header value.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "active" => Some(Self::Active),
            "standby" => Some(Self::Standby),
            "handover" => Some(Self::Handover),
            _ => None,
        }
    }
}

/// Why a node took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TakeoverReason {
    /// The active missed keep-alives and did not answer the probe.
    PeerSilent,
    /// The active handed over (switchover requested on the active).
    Handover,
    /// An operator asked this node (the stand-by) to take over.
    Switchover,
    /// No active peer seen during start-up, and this node's home role is `main`.
    Startup,
    /// The home `main` took its role back after `preempt_after_s` of stable keep-alives.
    Preempt,
    /// Still active, but the peer (now stand-by) reached a higher epoch while we did not
    /// hear it (a split): our calls may have moved to it, so we take them back.
    Reclaim,
    /// The active stopped announcing itself and answered the probe as stand-by: it crashed
    /// and was restarted (by systemd, say) between two keep-alives, lost its calls and came
    /// back as stand-by. Nobody is active; this node holds the calls' digest.
    PeerNotActive,
}

/// Why a node stepped down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepDownReason {
    /// The peer is active with a higher epoch (fencing).
    HigherEpoch,
    /// Same epoch, both active: the home `main` wins.
    Tie,
    /// We handed over and the peer took over.
    HandedOver,
}

/// What the machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a keep-alive OPTIONS to the peer announcing this role.
    SendKeepalive(Announced),
    /// Send the direct probe (the seed's inquiry) to the active.
    SendProbe,
    /// Ping the witnesses: one answer proves we are not isolated.
    PingWitnesses,
    /// Write `epoch` durably, then report with [`RoleMachine::on_epoch_persisted`]; the node
    /// is `TakingOver` meanwhile (not active: it takes no calls).
    PersistEpoch {
        /// The new epoch.
        epoch: u64,
    },
    /// An active node raised its epoch above the peer's (durably): re-bind every call it
    /// has, since during a split the peer may have taken them (and lost them since).
    Reclaim {
        /// The new epoch.
        epoch: u64,
    },
    /// The new epoch is durable: act as active.
    BecomeActive {
        /// The new epoch (persisted).
        epoch: u64,
        /// Why.
        reason: TakeoverReason,
    },
    /// Stop acting as active.
    StepDown(StepDownReason),
    /// Something an operator should know.
    Warn(String),
}

/// Timing and identity.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Keep-alive interval.
    pub keepalive: Duration,
    /// Missed intervals before the probe.
    pub missed: u32,
    /// How long the probe may take.
    pub probe_timeout: Duration,
    /// Home role.
    pub home: HomeRole,
    /// Whether witnesses must confirm we are not the one cut off before a takeover.
    pub witnesses: bool,
    /// Fail back: a home `main` that is stand-by takes its role back after the peer has been
    /// heard without interruption this long (`pair.preempt` / `preempt_after_s`).
    pub preempt_after: Option<Duration>,
}

/// What we know of the peer.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// Its node name.
    pub name: Option<String>,
    /// Its announced role.
    pub role: Option<Announced>,
    /// Its epoch.
    pub epoch: u64,
    /// When its last valid keep-alive (request or answer) arrived.
    pub last_seen: Option<Instant>,
    /// Round-trip time of our last answered keep-alive.
    pub rtt: Option<Duration>,
    /// Its calls count.
    pub calls: u64,
    /// Its config digest.
    pub config: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Listening for one detection period before deciding (DESIGN "Start-up").
    Starting { until: Instant },
    /// Normal operation.
    Running,
    /// The probe is out; takeover if no answer by `deadline`.
    Probing { deadline: Instant },
    /// We asked the peer to take over; give up at `deadline`.
    HandingOver { deadline: Instant },
    /// The probe failed; waiting for a witness to answer before taking over.
    Witnessing { deadline: Instant },
}

/// The role machine.
#[derive(Debug)]
pub struct RoleMachine {
    s: Settings,
    role: Role,
    epoch: u64,
    phase: Phase,
    next_tick: Instant,
    /// When the last valid keep-alive from an active peer arrived (or when we started
    /// watching, if it never did).
    last_heard: Option<Instant>,
    /// Missed intervals already counted into `missed_total`.
    missed_counted: u32,
    /// Since when the active peer has been heard without a missed interval.
    heard_since: Option<Instant>,
    peer: PeerView,
    actions: VecDeque<Action>,
    /// Keep-alive intervals missed in total (metrics).
    pub missed_total: u64,
    /// Takeovers performed (metrics).
    pub takeovers: u64,
    /// The last takeover attempt found neither the peer nor any witness.
    pub isolated: bool,
    /// While taking over: the epoch being persisted, why, and the epoch to return to if the
    /// write fails.
    persisting: Option<(u64, TakeoverReason, u64)>,
}

impl RoleMachine {
    /// A machine starting at `now` with the persisted `epoch`.
    pub fn new(s: Settings, epoch: u64, now: Instant) -> Self {
        let detection = s.keepalive * s.missed + s.probe_timeout;
        Self {
            role: Role::Standby,
            epoch,
            phase: Phase::Starting {
                until: now + detection,
            },
            next_tick: now,
            last_heard: None,
            missed_counted: 0,
            heard_since: None,
            peer: PeerView::default(),
            actions: VecDeque::new(),
            missed_total: 0,
            takeovers: 0,
            isolated: false,
            persisting: None,
            s,
        }
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch being made durable, while taking over (or reclaiming).
    pub fn persisting_epoch(&self) -> Option<u64> {
        self.persisting.map(|(e, _, _)| e)
    }

    /// What we know of the peer.
    pub fn peer(&self) -> &PeerView {
        &self.peer
    }

    /// Whether the peer was heard within `window`.
    pub fn peer_heard_within(&self, now: Instant, window: Duration) -> bool {
        self.peer
            .last_seen
            .is_some_and(|t| now.saturating_duration_since(t) <= window)
    }

    /// Whether the peer is a stand-by that reads our digest: heard within `window`, and last
    /// announcing itself stand-by. A peer last heard as active (the main this node just took
    /// over from, its last messages still queued) reads none.
    pub fn standby_listening(&self, now: Instant, window: Duration) -> bool {
        self.peer_heard_within(now, window) && self.peer.role == Some(Announced::Standby)
    }

    /// Whether the peer is alive: heard within `missed_keepalives` intervals.
    pub fn peer_alive(&self, now: Instant) -> bool {
        self.peer_heard_within(now, self.s.keepalive * self.s.missed)
    }

    /// Whether this node accepts new calls (active and not handing over).
    pub fn accepts_calls(&self) -> bool {
        self.role == Role::Active && !matches!(self.phase, Phase::HandingOver { .. })
    }

    /// The role our keep-alives announce.
    pub fn announced(&self) -> Announced {
        match (self.role, self.phase) {
            (Role::Active, Phase::HandingOver { .. }) => Announced::Handover,
            (Role::Active, _) => Announced::Active,
            _ => Announced::Standby,
        }
    }

    /// Keep-alive intervals since the active was last heard (stand-by only).
    pub fn missed(&self) -> u32 {
        self.missed_counted
    }

    fn missed_at(&self, now: Instant) -> u32 {
        match self.last_heard {
            Some(h) if self.role == Role::Standby => {
                (now.saturating_duration_since(h).as_micros() / self.s.keepalive.as_micros().max(1))
                    as u32
            }
            _ => 0,
        }
    }

    /// When the stand-by probes if nothing is heard before.
    fn probe_due(&self) -> Option<Instant> {
        match (self.role, self.phase, self.last_heard) {
            (Role::Standby, Phase::Running, Some(h)) => Some(h + self.s.keepalive * self.s.missed),
            _ => None,
        }
    }

    fn take_over(&mut self, reason: TakeoverReason) {
        if self.role != Role::Standby {
            return;
        }
        self.heard_since = None;
        let before = self.epoch;
        // The peer's epoch comes off the wire (authenticated, but still a u64 from outside).
        // The new epoch is announced only once it is durable.
        let next = self.epoch.max(self.peer.epoch).saturating_add(1);
        self.role = Role::TakingOver;
        self.phase = Phase::Running;
        self.missed_counted = 0;
        self.persisting = Some((next, reason, before));
        self.actions.push_back(Action::PersistEpoch { epoch: next });
    }

    /// The write of `epoch` finished. Durable: the node is active now. Failed: it stays
    /// stand-by with its old epoch (a node that could restart into a lower epoch must not
    /// act as active), says why, and tries again after the next detection period.
    pub fn on_epoch_persisted(&mut self, now: Instant, epoch: u64, result: Result<(), String>) {
        let Some((pending, reason, before)) = self.persisting else {
            return;
        };
        if pending != epoch {
            return;
        }
        if reason == TakeoverReason::Reclaim {
            self.persisting = None;
            match result {
                Ok(()) if self.role == Role::Active => {
                    self.epoch = epoch;
                    self.actions.push_back(Action::Reclaim { epoch });
                }
                Ok(()) => {}
                Err(e) => self.actions.push_back(Action::Warn(format!(
                    "cannot persist epoch {epoch} ({e}): our calls are not reclaimed"
                ))),
            }
            return;
        }
        if self.role != Role::TakingOver {
            return;
        }
        self.persisting = None;
        match result {
            Ok(()) => {
                self.role = Role::Active;
                self.epoch = epoch;
                self.takeovers += 1;
                self.actions
                    .push_back(Action::BecomeActive { epoch, reason });
            }
            Err(e) => {
                self.role = Role::Standby;
                self.epoch = before;
                self.last_heard = Some(now);
                self.actions.push_back(Action::Warn(format!(
                    "cannot persist epoch {epoch} ({e}): not taking over; staying stand-by"
                )));
            }
        }
    }

    /// The peer announces itself active at `epoch` while our takeover's epoch is still being
    /// written. If it would win against the epoch we are writing (higher, or equal and the
    /// tie goes to it), becoming active would only re-bind a live active's calls and then
    /// step down: stay stand-by instead. The write goes on; the persisted epoch may then
    /// be above the one we act with, which is safe (it only ever bounds it from above).
    fn abandon_takeover(&mut self, now: Instant, epoch: u64) {
        let Some((pending, reason, before)) = self.persisting else {
            return;
        };
        let peer_wins = epoch > pending || (epoch == pending && self.s.home == HomeRole::Standby);
        if reason == TakeoverReason::Reclaim || !peer_wins {
            return;
        }
        self.persisting = None;
        self.role = Role::Standby;
        self.epoch = before;
        self.phase = Phase::Running;
        self.missed_counted = 0;
        self.last_heard = Some(now);
        self.heard_since = Some(now);
        self.actions.push_back(Action::Warn(format!(
            "the peer became active at epoch {epoch} while epoch {pending} was being written: \
             not taking over ({reason:?}); staying stand-by"
        )));
    }

    fn step_down(&mut self, now: Instant, reason: StepDownReason) {
        self.role = Role::Standby;
        self.phase = Phase::Running;
        self.missed_counted = 0;
        self.last_heard = Some(now);
        self.actions.push_back(Action::StepDown(reason));
    }

    /// A valid keep-alive (request, or the answer to ours) from the peer.
    #[allow(clippy::too_many_arguments)]
    pub fn on_keepalive(
        &mut self,
        now: Instant,
        name: &str,
        announced: Announced,
        epoch: u64,
        calls: u64,
        config: &str,
        rtt: Option<Duration>,
    ) {
        self.peer.name = Some(name.to_string());
        self.peer.role = Some(announced);
        self.peer.epoch = epoch;
        self.peer.last_seen = Some(now);
        self.peer.calls = calls;
        self.peer.config = Some(config.to_string());
        if rtt.is_some() {
            self.peer.rtt = rtt;
        }
        let peer_active = matches!(announced, Announced::Active | Announced::Handover);
        if peer_active {
            let continuous = self
                .last_heard
                .is_some_and(|h| now.duration_since(h) <= self.s.keepalive * 2);
            if !continuous || self.heard_since.is_none() {
                self.heard_since = Some(now);
            }
            self.last_heard = Some(now);
            self.missed_counted = 0;
            self.isolated = false;
        }
        if let Phase::Probing { .. } = self.phase
            && peer_active
        {
            self.phase = Phase::Running;
            self.actions.push_back(Action::Warn(format!(
                "the active missed {} keep-alives but answered the probe: not taking over",
                self.s.missed
            )));
        }
        match (self.role, announced) {
            (Role::Standby, Announced::Handover) => self.take_over(TakeoverReason::Handover),
            (Role::Standby, Announced::Active) => {
                if let Phase::Starting { .. } = self.phase {
                    self.phase = Phase::Running;
                }
            }
            (Role::Active, Announced::Standby)
                if epoch > self.epoch
                    && self.persisting.is_none()
                    && !matches!(self.phase, Phase::HandingOver { .. }) =>
            {
                // The peer was active at a higher epoch while we did not hear it: raise ours
                // above it first (durably), then take our calls back.
                let next = epoch.saturating_add(1);
                self.persisting = Some((next, TakeoverReason::Reclaim, self.epoch));
                self.actions.push_back(Action::PersistEpoch { epoch: next });
            }
            (Role::TakingOver, Announced::Active) => self.abandon_takeover(now, epoch),
            (Role::Active, Announced::Active | Announced::Handover) => {
                if epoch > self.epoch {
                    let reason = if matches!(self.phase, Phase::HandingOver { .. }) {
                        StepDownReason::HandedOver
                    } else {
                        StepDownReason::HigherEpoch
                    };
                    self.step_down(now, reason);
                } else if epoch == self.epoch && self.s.home == HomeRole::Standby {
                    self.step_down(now, StepDownReason::Tie);
                }
            }
            _ => {}
        }
    }

    /// The peer answered our probe with a valid 200.
    pub fn on_probe_answer(&mut self, now: Instant, name: &str, announced: Announced, epoch: u64) {
        self.on_keepalive(
            now,
            name,
            announced,
            epoch,
            self.peer.calls,
            &self.peer.config.clone().unwrap_or_default(),
            None,
        );
        if let Phase::Probing { .. } = self.phase {
            self.phase = Phase::Running;
            if self.role == Role::Standby && announced == Announced::Standby {
                // The peer answered but is not active: it restarted as stand-by, and with
                // two stand-bys nobody serves. Take over (if both do, the epoch tie rule
                // leaves one active).
                self.take_over(TakeoverReason::PeerNotActive);
            }
        }
    }

    /// A witness answered our ping.
    pub fn on_witness_answer(&mut self) {
        if let Phase::Witnessing { .. } = self.phase
            && self.role == Role::Standby
        {
            self.isolated = false;
            self.take_over(TakeoverReason::PeerSilent);
        }
    }

    /// An operator asked for a switchover on this node.
    pub fn request_switchover(&mut self, now: Instant) -> Result<(), &'static str> {
        match self.role {
            Role::Active => {
                if !self.peer_alive(now) {
                    return Err("the peer is not answering keep-alives: no one to hand over to");
                }
                self.phase = Phase::HandingOver {
                    deadline: now + self.s.keepalive * (self.s.missed + 2) + self.s.probe_timeout,
                };
                self.actions
                    .push_back(Action::SendKeepalive(Announced::Handover));
                Ok(())
            }
            Role::Standby => {
                self.take_over(TakeoverReason::Switchover);
                Ok(())
            }
            Role::TakingOver => Err("a takeover is already in progress"),
        }
    }

    /// Advance the clock.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Starting { until } = self.phase
            && now >= until
        {
            self.phase = Phase::Running;
            let peer_active = self.peer.last_seen.is_some()
                && matches!(
                    self.peer.role,
                    Some(Announced::Active | Announced::Handover)
                );
            if !peer_active && self.s.home == HomeRole::Main {
                self.take_over(TakeoverReason::Startup);
            }
        }
        if let Phase::Probing { deadline } = self.phase
            && now >= deadline
            && self.role == Role::Standby
        {
            if self.s.witnesses {
                self.phase = Phase::Witnessing {
                    deadline: now + self.s.probe_timeout,
                };
                self.actions.push_back(Action::PingWitnesses);
            } else {
                self.take_over(TakeoverReason::PeerSilent);
            }
        }
        if let (Some(after), Role::Standby, Phase::Running, HomeRole::Main) =
            (self.s.preempt_after, self.role, self.phase, self.s.home)
            && self
                .last_heard
                .is_some_and(|h| now.duration_since(h) < self.s.keepalive * 2)
            && self
                .heard_since
                .is_some_and(|since| now.duration_since(since) >= after)
        {
            self.take_over(TakeoverReason::Preempt);
        }
        if let Phase::Witnessing { deadline } = self.phase
            && now >= deadline
        {
            // Neither the peer nor any witness answers: we are the one cut off.
            self.isolated = true;
            self.phase = Phase::Running;
            self.last_heard = Some(now);
            self.missed_counted = 0;
            self.actions.push_back(Action::Warn(
                "the active and every witness are unreachable: this node is isolated and stays stand-by".into(),
            ));
        }
        if let Phase::HandingOver { deadline } = self.phase
            && now >= deadline
        {
            self.phase = Phase::Running;
            self.actions.push_back(Action::Warn(
                "switchover: the peer did not take over; staying active".into(),
            ));
        }
        // The stand-by's miss rule: N keep-alive intervals without a valid keep-alive from the
        // active, counted from the last one heard, then the direct probe.
        if self.role == Role::Standby && self.phase == Phase::Running {
            if self.last_heard.is_none() {
                self.last_heard = Some(now);
            }
            let missed = self.missed_at(now);
            if missed > self.missed_counted {
                self.missed_total += u64::from(missed - self.missed_counted);
                self.missed_counted = missed;
            }
            if self.probe_due().is_some_and(|d| now >= d) {
                self.actions.push_back(Action::SendProbe);
                self.phase = Phase::Probing {
                    deadline: now + self.s.probe_timeout,
                };
            }
        }
        if now >= self.next_tick {
            // One keep-alive per due tick; after a stall the schedule restarts from now
            // rather than sending every missed one at once.
            self.next_tick += self.s.keepalive;
            if self.next_tick <= now {
                self.next_tick = now + self.s.keepalive;
            }
            self.actions
                .push_back(Action::SendKeepalive(self.announced()));
        }
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        if let Some(d) = self.probe_due() {
            t = t.min(d);
        }
        match self.phase {
            Phase::Starting { until } => t = t.min(until),
            Phase::Probing { deadline }
            | Phase::HandingOver { deadline }
            | Phase::Witnessing { deadline } => t = t.min(deadline),
            Phase::Running => {}
        }
        t
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

#[cfg(test)]
#[path = "role_tests.rs"]
mod tests;
