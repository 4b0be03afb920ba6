//! Every other decoder that takes peer bytes, one per leading selector byte:
//!
//! - 0: `statewire::packet::Packet::decode` (session packets; a decoded packet re-encodes to
//!   the same bytes),
//! - 1: `statewire::connection::Connection::handle_payload` on a fresh connection, then the
//!   connection still sends and polls without panicking,
//! - 2: `statewire::discovery::Beacon::decode` (re-encodes to the same bytes),
//! - 3: `statewire_core::authority::decode_writes` and, for each write, `Authority::accept_write`,
//! - 4: `statewire_core::events::decode_proposal`,
//! - 5: a replication packet for a registry with entropy-coded components, through
//!   `ClientReplicator::handle_packet_with_events`,
//! - 6: `statewire::ConnectToken::decode` (a token a client was handed; re-encodes to the same
//!   bytes).
//!
//! None may panic; each returns a typed error or a value that survives a round trip.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use statewire::connection::{Connection, ConnectionConfig};
use statewire::discovery::Beacon;
use statewire::packet::Packet;
use statewire_core::authority::decode_writes;
use statewire_core::events::decode_proposal;
use statewire_core::{
    Authority, AuthorityConfig, ClientConfig, ClientId, ClientReplicator, ComponentCoding,
    EntityId, EventConfig, EventSink, GameEvent, Owner,
};
use statewire_fuzz::{Mirror, registry};

struct Both(Mirror, Vec<GameEvent>);

impl statewire_core::WorldSink for Both {
    fn spawn(&mut self, id: EntityId, owner: Owner) {
        self.0.spawn(id, owner);
    }
    fn despawn(&mut self, id: EntityId) {
        self.0.despawn(id);
    }
    fn set_owner(&mut self, id: EntityId, owner: Owner) {
        self.0.set_owner(id, owner);
    }
    fn insert(&mut self, id: EntityId, c: statewire_core::ComponentView<'_>) {
        self.0.insert(id, c);
    }
    fn remove(&mut self, id: EntityId, c: statewire_core::ComponentView<'_>) {
        self.0.remove(id, c);
    }
}

impl EventSink for Both {
    fn event(&mut self, e: &GameEvent) {
        if let Some(last) = self.1.last() {
            assert_eq!(e.id.0, last.id.0 + 1, "events out of order");
        }
        self.1.push(e.clone());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        6 => {
            if let Ok(t) = statewire::ConnectToken::decode(body) {
                assert_eq!(t.encode(), body, "token does not re-encode");
            }
        }
        0 => {
            if let Ok(p) = Packet::decode(body) {
                let mut out = Vec::new();
                p.encode(&mut out);
                assert_eq!(out, body, "session packet does not re-encode");
            }
        }
        1 => {
            let mut c = Connection::new(ConnectionConfig::default(), Duration::ZERO);
            let _ = c.handle_payload(Duration::from_millis(1), body);
            while c.poll_message().is_some() {}
            let mut out = Vec::new();
            let _ = c.poll_transmit(Duration::from_millis(2), &mut out);
        }
        2 => {
            if let Ok(b) = Beacon::decode(body) {
                let mut out = Vec::new();
                b.encode(&mut out).expect("a decoded beacon encodes");
                assert_eq!(out, body, "beacon does not re-encode");
            }
        }
        3 => {
            let reg = registry();
            if let Ok(writes) = decode_writes(&reg, body, 64) {
                let mut a = Authority::new(AuthorityConfig::default());
                a.insert(EntityId(1), Owner::Client(ClientId(1)));
                let mut out = Vec::new();
                for w in &writes {
                    out.clear();
                    let _ = a.accept_write(&reg, ClientId(1), w, &mut out);
                }
            }
        }
        4 => {
            let _ = decode_proposal(body, ClientId(3), &EventConfig::default());
        }
        _ => {
            // Every registered type entropy-coded: the whole tail decoder is reachable.
            let mut reg = registry();
            statewire_fuzz::set_entropy(&mut reg, ComponentCoding::Entropy);
            let mut client = ClientReplicator::new(ClientConfig::default());
            let mut sink = Both(Mirror::default(), Vec::new());
            let _ = client.handle_packet_with_events(&reg, body, &mut sink);
            sink.0.check(&reg, &client.snapshot());
        }
    }
});
