//! Arbitrary bytes into `ClientReplicator::handle_packet` with a fixed registry.
//!
//! The first input byte selects the setup:
//! - bit 0: apply a valid baseline packet (tick 1, five entities) first, so the input can be a
//!   delta against a real baseline;
//! - bit 1: instead of using the rest of the input as the whole packet, prepend a well-formed
//!   header (tick 2, against tick 1 when bit 0 is set, else against the empty state) and use the
//!   input bytes as the record bits, so the fuzzer spends its time inside the record decoder.
//!
//! Checks: no panic; an error leaves the state and the ack untouched and calls nothing on the
//! sink; an applied packet reports changes that rebuild exactly the new state, every value is
//! in its field's range and dequantizes, and the state survives a full re-encode.

#![no_main]

use libfuzzer_sys::fuzz_target;
use statewire_core::bits::BitWriter;
use statewire_core::{Applied, ClientConfig, ClientReplicator, packet_header};
use statewire_fuzz::{
    BASELINE_TICK, Mirror, baseline_packet, check_dequantize, check_ranges, check_reencode,
    registry,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let reg = registry();
    let mut client = ClientReplicator::new(ClientConfig {
        history_len: 4,
        max_entities: 4096,
        ..ClientConfig::default()
    });
    let mut mirror = Mirror::default();
    let with_baseline = mode & 1 == 1;
    if with_baseline {
        client
            .handle_packet(&reg, &baseline_packet(&reg), &mut mirror)
            .expect("baseline packet decodes");
        mirror.check(&reg, &client.snapshot());
    }

    let packet = if mode & 2 == 2 {
        let mut p = Vec::with_capacity(body.len() + 8);
        p.push(0); // empty events section
        let mut w = BitWriter::new(&mut p);
        w.write(BASELINE_TICK.0 + 1, 32);
        w.write_bool(with_baseline);
        if with_baseline {
            w.write(1, 16);
        }
        for &b in body {
            w.write(u32::from(b), 8);
        }
        w.finish();
        p
    } else {
        body.to_vec()
    };

    let before = client.snapshot();
    let ack_before = client.ack();
    let header = packet_header(&packet);
    mirror.begin();
    match client.handle_packet(&reg, &packet, &mut mirror) {
        Ok(Applied::Applied(h)) => {
            assert_eq!(header, Ok(h));
            assert_eq!(client.ack().map(|a| a.newest), Some(h.tick));
            mirror.check(&reg, &client.snapshot());
            check_ranges(&reg, &client.snapshot());
            check_dequantize(&reg, &client.snapshot());
            check_reencode(&reg, &client.snapshot());
        }
        Ok(other) => {
            assert!(matches!(other, Applied::Stale(_)), "{other:?}");
            assert_eq!(client.snapshot(), before);
            assert_eq!(client.ack(), ack_before);
            assert_eq!(mirror.calls, 0);
        }
        Err(_) => {
            assert_eq!(client.snapshot(), before);
            assert_eq!(client.ack(), ack_before);
            assert_eq!(mirror.calls, 0, "a rejected packet changed the world");
        }
    }
});
