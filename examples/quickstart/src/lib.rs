//! statewire quickstart: two clients each move their own entity; one server-resolved kill.
use std::time::Duration;

use statewire::endpoint::*;
use statewire_core::{Owner, Replicate};
use statewire_transport::Transport;

/// A replicated position: x and y in ±100 m at 1 cm.
#[derive(Replicate, Debug, Clone, Copy, PartialEq)]
pub struct Pos(
    #[replicate(float(min = -100.0, max = 100.0, precision = 0.01))] f32,
    #[replicate(float(min = -100.0, max = 100.0, precision = 0.01))] f32,
);

const KILL: u16 = 1;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Plays 8 s at 30 Hz: the kills each client saw, and whether both hold the server's world.
pub fn play<T: Transport>(server_t: T, clients: [T; 2], pause: Duration) -> Res<([u32; 2], bool)> {
    let protocol = Protocol::new().with::<Pos>()?;
    let addr = server_t.local_addr();
    let mut server = GameServer::<T, ()>::new(server_t, &protocol, GameServerConfig::default())?;
    let enemy = server.spawn(Owner::Server)?;
    server.store_mut().set(enemy, &Pos(50.0, 50.0))?;
    let [a, b] = clients.map(|t| GameClient::<T, ()>::connect(t, addr, &protocol, Duration::ZERO));
    let mut clients = [a?, b?];
    let (mut kills, mut claimed) = ([0; 2], false);
    for frame in 0..240 {
        let now = Duration::from_millis(33) * frame;
        server.update(now)?;
        while let Some(ev) = server.poll_event() {
            if let GameServerEvent::Joined(c) = ev {
                let e = server.spawn(Owner::Client(c))?;
                server.store_mut().set(e, &Pos(0.0, 0.0))?;
            }
        }
        // The first claim on a live enemy wins: the server despawns it, once.
        server.resolve_events(|p, store| {
            p.kind == KILL
                && p.entities
                    .first()
                    .is_some_and(|&e| store.despawn(e).is_ok())
        });
        server.flush(now)?;
        for (i, c) in clients.iter_mut().enumerate() {
            c.update(now)?;
            while let Some(ev) = c.poll_event() {
                kills[i] += u32::from(matches!(ev, GameClientEvent::Event(e) if e.kind == KILL));
            }
            // Move only our own entity: the server accepts writes from its owner alone.
            if let (Some(&me), true) = (c.owned().first(), frame < 180) {
                let Pos(x, _) = c.get::<Pos>(me).unwrap_or(Pos(0.0, 0.0));
                c.write(me, &Pos(x + 0.1, i as f32))?;
                if i == 0 && !std::mem::replace(&mut claimed, true) {
                    c.propose(KILL, &[enemy], &[])?;
                }
            }
            c.flush(now)?;
        }
        std::thread::sleep(pause);
    }
    let truth = server.store().snapshot();
    Ok((kills, clients.iter().all(|c| c.snapshot() == truth)))
}
