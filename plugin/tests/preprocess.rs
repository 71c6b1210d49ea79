//! Pre-processing tests: the bytes the model sees for each packet, against vectors computed by
//! hand (written out per field below, never produced by the code under test), and which
//! packets the filter drops.

mod common;

use std::net::Ipv4Addr;

use combo_plugin::config::PreprocessConfig;
use combo_plugin::parse::{self, LinkType, Packet};
use combo_plugin::preprocess::{Filter, encode, filter};
use common::*;

// ---------------------------------------------------------------------------------------------
// Input frames, written out per field
// ---------------------------------------------------------------------------------------------

/// IPv4 + TCP with a 4-byte payload in an Ethernet frame with 2 bytes of padding and a 4-byte
/// trailer. Every header field is non-zero so each mask shows.
#[rustfmt::skip]
const IPV4_TCP_FRAME: [u8; 64] = [
    // Ethernet
    0x00, 0x1b, 0x21, 0x3a, 0x4c, 0x5d, // destination MAC
    0x00, 0x50, 0x56, 0xc0, 0x00, 0x08, // source MAC
    0x08, 0x00,                         // ethertype IPv4
    // IPv4 (offset 0 of the output)
    0x45, 0x00,                         // version 4, IHL 5; DSCP/ECN
    0x00, 0x2c,                         // total length 44 = 20 + 20 + 4
    0x1c, 0x46,                         // identification
    0x40, 0x00,                         // flags DF, fragment offset 0
    0x40, 0x06,                         // TTL 64, protocol TCP
    0xb1, 0xe6,                         // header checksum
    0xc0, 0xa8, 0x00, 0x68,             // source 192.168.0.104
    0xc0, 0xa8, 0x00, 0x01,             // destination 192.168.0.1
    // TCP (offset 20)
    0xc3, 0x50,                         // source port 50000
    0x01, 0xbb,                         // destination port 443
    0x11, 0x22, 0x33, 0x44,             // sequence number
    0x55, 0x66, 0x77, 0x88,             // acknowledgement number
    0x50, 0x18,                         // data offset 5; flags PSH ACK
    0x01, 0xf5,                         // window
    0xab, 0xcd,                         // checksum
    0x00, 0x07,                         // urgent pointer
    // payload (offset 40)
    0x17, 0x03, 0x03, 0x00,
    // Ethernet padding up to 60 bytes, then a trailer (FCS): not part of the IP packet
    0xee, 0xee,
    0xde, 0xad, 0xbe, 0xef,
];

/// [`IPV4_TCP_FRAME`] with the default settings: addresses, sequence and acknowledgement
/// numbers zeroed, padding and trailer gone.
#[rustfmt::skip]
const IPV4_TCP_DEFAULT: [u8; 44] = [
    0x45, 0x00, 0x00, 0x2c,             // version/IHL, DSCP, total length
    0x1c, 0x46, 0x40, 0x00,             // identification, flags/offset
    0x40, 0x06, 0xb1, 0xe6,             // TTL, protocol, checksum
    0x00, 0x00, 0x00, 0x00,             // source: zeroed
    0x00, 0x00, 0x00, 0x00,             // destination: zeroed
    0xc3, 0x50, 0x01, 0xbb,             // ports
    0x00, 0x00, 0x00, 0x00,             // sequence number: zeroed
    0x00, 0x00, 0x00, 0x00,             // acknowledgement number: zeroed
    0x50, 0x18, 0x01, 0xf5,             // data offset, flags, window
    0xab, 0xcd, 0x00, 0x07,             // checksum, urgent pointer
    0x17, 0x03, 0x03, 0x00,             // payload
];

/// IPv4 + UDP with an 8-byte payload; the frame is padded to 60 bytes with zeros.
#[rustfmt::skip]
const IPV4_UDP_FRAME: [u8; 60] = [
    // Ethernet
    0x00, 0x1b, 0x21, 0x3a, 0x4c, 0x5d, // destination MAC
    0x00, 0x50, 0x56, 0xc0, 0x00, 0x08, // source MAC
    0x08, 0x00,                         // ethertype IPv4
    // IPv4
    0x45, 0x00,                         // version 4, IHL 5; DSCP/ECN
    0x00, 0x24,                         // total length 36 = 20 + 8 + 8
    0xab, 0xcd,                         // identification
    0x00, 0x00,                         // flags, fragment offset
    0x80, 0x11,                         // TTL 128, protocol UDP
    0x12, 0x34,                         // header checksum
    0x0a, 0x00, 0x00, 0x05,             // source 10.0.0.5
    0x08, 0x08, 0x04, 0x04,             // destination 8.8.4.4
    // UDP (offset 20)
    0xd4, 0x31,                         // source port 54321
    0x01, 0xbb,                         // destination port 443
    0x00, 0x10,                         // length 16
    0x9a, 0xbc,                         // checksum
    // payload (offset 28)
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    // Ethernet padding up to 60 bytes
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// [`IPV4_UDP_FRAME`] with the default settings: the UDP header padded to 20 bytes.
#[rustfmt::skip]
const IPV4_UDP_DEFAULT: [u8; 48] = [
    0x45, 0x00, 0x00, 0x24,             // version/IHL, DSCP, total length
    0xab, 0xcd, 0x00, 0x00,             // identification, flags/offset
    0x80, 0x11, 0x12, 0x34,             // TTL, protocol, checksum
    0x00, 0x00, 0x00, 0x00,             // source: zeroed
    0x00, 0x00, 0x00, 0x00,             // destination: zeroed
    0xd4, 0x31, 0x01, 0xbb,             // ports
    0x00, 0x10, 0x9a, 0xbc,             // length, checksum (untouched: no sequence number)
    0x00, 0x00, 0x00, 0x00,             // 12 bytes of UDP header padding
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x01, 0x02, 0x03, 0x04,             // payload
    0x05, 0x06, 0x07, 0x08,
];

/// IPv6 + TCP with a 6-byte payload.
#[rustfmt::skip]
const IPV6_TCP_FRAME: [u8; 80] = [
    // Ethernet
    0x00, 0x1b, 0x21, 0x3a, 0x4c, 0x5d, // destination MAC
    0x00, 0x50, 0x56, 0xc0, 0x00, 0x08, // source MAC
    0x86, 0xdd,                         // ethertype IPv6
    // IPv6
    0x6a, 0xbc, 0xde, 0xf1,             // version 6, traffic class 0xab, flow label 0xcdef1
    0x00, 0x1a,                         // payload length 26 = 20 + 6
    0x06, 0x40,                         // next header TCP, hop limit 64
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // source 2001:db8::1
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // destination 2001:db8::2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
    // TCP (offset 40)
    0x01, 0xbb,                         // source port 443
    0xc3, 0x50,                         // destination port 50000
    0xde, 0xad, 0xbe, 0xef,             // sequence number
    0x01, 0x02, 0x03, 0x04,             // acknowledgement number
    0x50, 0x18,                         // data offset 5; flags PSH ACK
    0x00, 0x80,                         // window
    0x12, 0x34,                         // checksum
    0x00, 0x00,                         // urgent pointer
    // payload (offset 60)
    0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
];

/// [`IPV6_TCP_FRAME`] with the default settings.
#[rustfmt::skip]
const IPV6_TCP_DEFAULT: [u8; 66] = [
    0x6a, 0xbc, 0xde, 0xf1,             // version, traffic class, flow label
    0x00, 0x1a, 0x06, 0x40,             // payload length, next header, hop limit
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // source: zeroed
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // destination: zeroed
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0xbb, 0xc3, 0x50,             // ports
    0x00, 0x00, 0x00, 0x00,             // sequence number: zeroed
    0x00, 0x00, 0x00, 0x00,             // acknowledgement number: zeroed
    0x50, 0x18, 0x00, 0x80,             // data offset, flags, window
    0x12, 0x34, 0x00, 0x00,             // checksum, urgent pointer
    0x61, 0x62, 0x63, 0x64, 0x65, 0x66, // payload
];

/// IPv4 with a 4-byte option (IHL 6) and TCP with 12 bytes of options (data offset 8).
#[rustfmt::skip]
const IPV4_OPTIONS_TCP_OPTIONS_FRAME: [u8; 73] = [
    // Ethernet
    0x00, 0x1b, 0x21, 0x3a, 0x4c, 0x5d, // destination MAC
    0x00, 0x50, 0x56, 0xc0, 0x00, 0x08, // source MAC
    0x08, 0x00,                         // ethertype IPv4
    // IPv4
    0x46, 0x00,                         // version 4, IHL 6; DSCP/ECN
    0x00, 0x3b,                         // total length 59 = 24 + 32 + 3
    0x00, 0x01,                         // identification
    0x40, 0x00,                         // flags DF
    0x3f, 0x06,                         // TTL 63, protocol TCP
    0x55, 0xaa,                         // header checksum
    0x0a, 0x01, 0x02, 0x03,             // source 10.1.2.3
    0x0a, 0x04, 0x05, 0x06,             // destination 10.4.5.6
    0x94, 0x04, 0x00, 0x00,             // option: router alert
    // TCP (offset 24)
    0x00, 0x16,                         // source port 22
    0xe0, 0x01,                         // destination port 57345
    0x0a, 0x0b, 0x0c, 0x0d,             // sequence number
    0x0e, 0x0f, 0x10, 0x11,             // acknowledgement number
    0x80, 0x18,                         // data offset 8; flags PSH ACK
    0x10, 0x00,                         // window
    0xc0, 0xde,                         // checksum
    0x00, 0x00,                         // urgent pointer
    0x02, 0x04, 0x05, 0xb4,             // option: MSS 1460
    0x01, 0x03, 0x03, 0x07,             // NOP, window scale 7
    0x04, 0x02, 0x01, 0x01,             // SACK permitted, NOP, NOP
    // payload (offset 56)
    0x61, 0x62, 0x63,
];

#[rustfmt::skip]
const IPV4_OPTIONS_TCP_OPTIONS_DEFAULT: [u8; 59] = [
    0x46, 0x00, 0x00, 0x3b,             // version/IHL 6, DSCP, total length
    0x00, 0x01, 0x40, 0x00,             // identification, flags/offset
    0x3f, 0x06, 0x55, 0xaa,             // TTL, protocol, checksum
    0x00, 0x00, 0x00, 0x00,             // source: zeroed
    0x00, 0x00, 0x00, 0x00,             // destination: zeroed
    0x94, 0x04, 0x00, 0x00,             // IP option
    0x00, 0x16, 0xe0, 0x01,             // ports
    0x00, 0x00, 0x00, 0x00,             // sequence number: zeroed
    0x00, 0x00, 0x00, 0x00,             // acknowledgement number: zeroed
    0x80, 0x18, 0x10, 0x00,             // data offset, flags, window
    0xc0, 0xde, 0x00, 0x00,             // checksum, urgent pointer
    0x02, 0x04, 0x05, 0xb4,             // TCP options, kept
    0x01, 0x03, 0x03, 0x07,
    0x04, 0x02, 0x01, 0x01,
    0x61, 0x62, 0x63,                   // payload
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn parsed(link: LinkType, frame: &[u8]) -> Packet<'_> {
    parse::parse(link, frame, frame.len() as u32).expect("test frame parses")
}

/// The model bytes of an Ethernet frame under `config`.
fn encoded(frame: &[u8], config: &PreprocessConfig) -> Vec<u8> {
    encoded_link(LinkType::ETHERNET, frame, config)
}

fn encoded_link(link: LinkType, frame: &[u8], config: &PreprocessConfig) -> Vec<u8> {
    // Start from garbage so a byte the encoder forgets to write shows.
    let mut out = vec![0x5a; config.packet_bytes];
    encode(&parsed(link, frame), config, &mut out);
    out
}

/// `prefix` followed by zeros up to `len` bytes.
fn zero_padded(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.resize(len, 0);
    bytes
}

fn with(change: impl FnOnce(&mut PreprocessConfig)) -> PreprocessConfig {
    let mut config = PreprocessConfig::default();
    change(&mut config);
    config
}

/// Asserts `actual` equals `baseline` except that exactly the bytes at `zeroed` are 0, and
/// that those bytes were not 0 already (otherwise the check would prove nothing).
fn assert_zeroed_exactly(actual: &[u8], baseline: &[u8], zeroed: &[usize], what: &str) {
    assert_eq!(actual.len(), baseline.len(), "{what}: length");
    for &at in zeroed {
        assert_ne!(baseline[at], 0, "{what}: baseline byte {at} is already zero");
    }
    for (at, (&got, &base)) in actual.iter().zip(baseline).enumerate() {
        let want = if zeroed.contains(&at) { 0 } else { base };
        assert_eq!(got, want, "{what}: byte {at}");
    }
}

/// A payload whose byte `i` is `i % 251`, so a shift or a cut at the wrong place shows.
fn counting_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv4_tcp_in_padded_ethernet_frame() {
    let out = encoded(&IPV4_TCP_FRAME, &PreprocessConfig::default());
    assert_eq!(out.len(), 1500);
    assert_eq!(out, zero_padded(&IPV4_TCP_DEFAULT, 1500));
    // The padding and trailer bytes must not leak in right after the payload.
    assert!(!out.windows(2).any(|w| w == [0xee, 0xee]));
    assert!(!out.windows(4).any(|w| w == [0xde, 0xad, 0xbe, 0xef]));
}

#[test]
fn ipv4_udp_header_is_padded_to_twenty_bytes() {
    let out = encoded(&IPV4_UDP_FRAME, &PreprocessConfig::default());
    assert_eq!(out, zero_padded(&IPV4_UDP_DEFAULT, 1500));
}

#[test]
fn ipv4_udp_without_header_padding() {
    #[rustfmt::skip]
    let expected: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24,         // version/IHL, DSCP, total length
        0xab, 0xcd, 0x00, 0x00,         // identification, flags/offset
        0x80, 0x11, 0x12, 0x34,         // TTL, protocol, checksum
        0x00, 0x00, 0x00, 0x00,         // source: zeroed
        0x00, 0x00, 0x00, 0x00,         // destination: zeroed
        0xd4, 0x31, 0x01, 0xbb,         // ports
        0x00, 0x10, 0x9a, 0xbc,         // length, checksum
        0x01, 0x02, 0x03, 0x04,         // payload right after the 8-byte header
        0x05, 0x06, 0x07, 0x08,
    ];
    let out = encoded(&IPV4_UDP_FRAME, &with(|c| c.pad_udp_header = false));
    assert_eq!(out, zero_padded(&expected, 1500));
}

#[test]
fn ipv6_tcp_addresses_are_zeroed() {
    let out = encoded(&IPV6_TCP_FRAME, &PreprocessConfig::default());
    assert_eq!(out, zero_padded(&IPV6_TCP_DEFAULT, 1500));
}

#[test]
fn ipv4_options_and_tcp_options_are_kept() {
    let out = encoded(&IPV4_OPTIONS_TCP_OPTIONS_FRAME, &PreprocessConfig::default());
    assert_eq!(out, zero_padded(&IPV4_OPTIONS_TCP_OPTIONS_DEFAULT, 1500));
}

#[test]
fn ipv6_udp_is_padded_and_addresses_zeroed() {
    #[rustfmt::skip]
    let l3: [u8; 52] = [
        0x60, 0x00, 0x00, 0x01,         // version 6, flow label 1
        0x00, 0x0c, 0x11, 0xff,         // payload length 12, next header UDP, hop limit 255
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, // source fe80::a
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, // destination fe80::b
        0x27, 0x10, 0x27, 0x11,         // ports 10000, 10001
        0x00, 0x0c, 0x44, 0x55,         // length 12, checksum
        0xca, 0xfe, 0xba, 0xbe,         // payload
    ];
    #[rustfmt::skip]
    let expected: [u8; 64] = [
        0x60, 0x00, 0x00, 0x01, 0x00, 0x0c, 0x11, 0xff,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // source: zeroed
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // destination: zeroed
        0x27, 0x10, 0x27, 0x11, 0x00, 0x0c, 0x44, 0x55, // UDP header
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,             // padding
        0xca, 0xfe, 0xba, 0xbe,                         // payload
    ];
    let out = encoded_link(LinkType::IPV6, &l3, &PreprocessConfig::default());
    assert_eq!(out, zero_padded(&expected, 1500));
}

#[test]
fn ipv6_extension_header_is_kept_and_tcp_found_after_it() {
    #[rustfmt::skip]
    let l3: [u8; 70] = [
        0x60, 0x00, 0x00, 0x00,         // version 6
        0x00, 0x1e, 0x00, 0x40,         // payload length 30 = 8 + 20 + 2, hop-by-hop, hop limit
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source 2001:db8::1
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination
        // hop-by-hop options (offset 40)
        0x06, 0x00,                     // next header TCP, length 0 (8 bytes)
        0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // PadN
        // TCP (offset 48)
        0x01, 0xbb, 0xc3, 0x51,         // ports 443, 50001
        0xa1, 0xa2, 0xa3, 0xa4,         // sequence number
        0xb1, 0xb2, 0xb3, 0xb4,         // acknowledgement number
        0x50, 0x18, 0x00, 0x40,         // data offset 5, PSH ACK, window
        0xcc, 0xdd, 0x00, 0x00,         // checksum, urgent pointer
        0x68, 0x69,                     // payload (offset 68)
    ];
    // With mask_checksums too: the TCP checksum sits at 48 + 16, after the extension header.
    #[rustfmt::skip]
    let expected: [u8; 70] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x40,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // source: zeroed
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // destination: zeroed
        0x06, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // hop-by-hop, kept
        0x01, 0xbb, 0xc3, 0x51,                         // ports
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // sequence, acknowledgement: zeroed
        0x50, 0x18, 0x00, 0x40,                         // data offset, flags, window
        0x00, 0x00, 0x00, 0x00,                         // checksum: masked; urgent pointer
        0x68, 0x69,                                     // payload
    ];
    let out = encoded_link(LinkType::IPV6, &l3, &with(|c| c.mask_checksums = true));
    assert_eq!(out, zero_padded(&expected, 1500));
}

// ---------------------------------------------------------------------------------------------
// Cutting to packet_bytes
// ---------------------------------------------------------------------------------------------

/// A raw IPv4 + TCP packet with a `payload_len`-byte counting payload.
fn long_tcp_packet(payload_len: usize) -> Vec<u8> {
    let total = (40 + payload_len) as u16;
    #[rustfmt::skip]
    let mut bytes = vec![
        0x45, 0x00,                     // version 4, IHL 5
        (total >> 8) as u8, total as u8, // total length
        0x00, 0x09, 0x40, 0x00,         // identification, flags DF
        0x40, 0x06, 0x77, 0x88,         // TTL 64, TCP, checksum
        0x0a, 0x00, 0x00, 0x01,         // source 10.0.0.1
        0x0a, 0x00, 0x00, 0x02,         // destination 10.0.0.2
        0x01, 0xbb, 0x9c, 0x40,         // ports 443, 40000
        0x00, 0x00, 0x10, 0x00,         // sequence number
        0x00, 0x00, 0x20, 0x00,         // acknowledgement number
        0x50, 0x10, 0x7f, 0xff,         // data offset 5, ACK, window
        0x99, 0x99, 0x00, 0x00,         // checksum, urgent pointer
    ];
    bytes.extend(counting_payload(payload_len));
    bytes
}

#[rustfmt::skip]
const LONG_TCP_HEADERS_DEFAULT: [u8; 40] = [
    0x45, 0x00, 0x06, 0x68,             // total length 1640
    0x00, 0x09, 0x40, 0x00,
    0x40, 0x06, 0x77, 0x88,
    0x00, 0x00, 0x00, 0x00,             // source: zeroed
    0x00, 0x00, 0x00, 0x00,             // destination: zeroed
    0x01, 0xbb, 0x9c, 0x40,
    0x00, 0x00, 0x00, 0x00,             // sequence number: zeroed
    0x00, 0x00, 0x00, 0x00,             // acknowledgement number: zeroed
    0x50, 0x10, 0x7f, 0xff,
    0x99, 0x99, 0x00, 0x00,
];

#[test]
fn packet_longer_than_packet_bytes_is_cut() {
    let packet = long_tcp_packet(1600);
    let out = encoded_link(LinkType::RAW, &packet, &PreprocessConfig::default());
    assert_eq!(out.len(), 1500);
    assert_eq!(out[..40], LONG_TCP_HEADERS_DEFAULT);
    assert_eq!(out[40..], counting_payload(1460));
}

#[test]
fn packet_bytes_100_cuts_and_pads_at_100() {
    let config = with(|c| c.packet_bytes = 100);

    // Long TCP: 40 header bytes and the first 60 payload bytes.
    let out = encoded_link(LinkType::RAW, &long_tcp_packet(1600), &config);
    assert_eq!(out.len(), 100);
    assert_eq!(out[..40], LONG_TCP_HEADERS_DEFAULT);
    assert_eq!(out[40..], counting_payload(60));

    // Short TCP: zero-padded to 100.
    let out = encoded(&IPV4_TCP_FRAME, &config);
    assert_eq!(out, zero_padded(&IPV4_TCP_DEFAULT, 100));

    // UDP: 20 + 8 header bytes, 12 padding bytes, then the first 60 payload bytes.
    let payload = counting_payload(200);
    let frame =
        udp4((Ipv4Addr::new(10, 0, 0, 1), 5000), (Ipv4Addr::new(10, 0, 0, 2), 6000), &payload);
    let out = encoded(&frame, &config);
    assert_eq!(out.len(), 100);
    #[rustfmt::skip]
    let udp_header: [u8; 8] = [
        0x13, 0x88, 0x17, 0x70,         // ports 5000, 6000
        0x00, 0xd0, 0x00, 0x00,         // length 208, checksum 0 (pnet leaves it)
    ];
    assert_eq!(out[20..28], udp_header);
    assert_eq!(out[28..40], [0u8; 12]);
    assert_eq!(out[40..], payload[..60]);
}

#[test]
fn snapped_capture_is_zero_filled() {
    // Only the first 50 bytes of the 1640-byte packet were captured.
    let packet = long_tcp_packet(1600);
    let captured = &packet[..50];
    let parsed = parse::parse(LinkType::RAW, captured, 1640).expect("headers were captured");
    assert!(parsed.snapped);
    let mut out = vec![0x5a; 1500];
    encode(&parsed, &PreprocessConfig::default(), &mut out);
    assert_eq!(out[..40], LONG_TCP_HEADERS_DEFAULT);
    assert_eq!(out[40..50], counting_payload(10));
    assert!(out[50..].iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------------------------
// Masks and anonymisation switches
// ---------------------------------------------------------------------------------------------

#[test]
fn each_mask_zeroes_exactly_its_bytes_ipv4_tcp() {
    let baseline = zero_padded(&IPV4_TCP_DEFAULT, 1500);
    let cases: [(&str, PreprocessConfig, &[usize]); 4] = [
        ("mask_ip_id", with(|c| c.mask_ip_id = true), &[4, 5]),
        ("mask_ttl", with(|c| c.mask_ttl = true), &[8]),
        // IPv4 header checksum, TCP checksum at 20 + 16.
        ("mask_checksums", with(|c| c.mask_checksums = true), &[10, 11, 36, 37]),
        ("mask_ports", with(|c| c.mask_ports = true), &[20, 21, 22, 23]),
    ];
    for (what, config, zeroed) in cases {
        let out = encoded(&IPV4_TCP_FRAME, &config);
        assert_zeroed_exactly(&out, &baseline, zeroed, what);
    }
}

#[test]
fn all_masks_together_ipv4_tcp() {
    #[rustfmt::skip]
    let expected: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c,         // version/IHL, DSCP, total length
        0x00, 0x00, 0x40, 0x00,         // identification: masked
        0x00, 0x06, 0x00, 0x00,         // TTL masked, protocol, checksum masked
        0x00, 0x00, 0x00, 0x00,         // source: zeroed
        0x00, 0x00, 0x00, 0x00,         // destination: zeroed
        0x00, 0x00, 0x00, 0x00,         // ports: masked
        0x00, 0x00, 0x00, 0x00,         // sequence number: zeroed
        0x00, 0x00, 0x00, 0x00,         // acknowledgement number: zeroed
        0x50, 0x18, 0x01, 0xf5,         // data offset, flags, window
        0x00, 0x00, 0x00, 0x07,         // checksum masked, urgent pointer
        0x17, 0x03, 0x03, 0x00,         // payload
    ];
    let config = with(|c| {
        c.mask_ip_id = true;
        c.mask_ttl = true;
        c.mask_checksums = true;
        c.mask_ports = true;
    });
    assert_eq!(encoded(&IPV4_TCP_FRAME, &config), zero_padded(&expected, 1500));
}

#[test]
fn each_mask_zeroes_exactly_its_bytes_ipv4_udp() {
    let baseline = zero_padded(&IPV4_UDP_DEFAULT, 1500);
    let cases: [(&str, PreprocessConfig, &[usize]); 4] = [
        ("mask_ip_id", with(|c| c.mask_ip_id = true), &[4, 5]),
        ("mask_ttl", with(|c| c.mask_ttl = true), &[8]),
        // IPv4 header checksum, UDP checksum at 20 + 6 (before the padding).
        ("mask_checksums", with(|c| c.mask_checksums = true), &[10, 11, 26, 27]),
        ("mask_ports", with(|c| c.mask_ports = true), &[20, 21, 22, 23]),
    ];
    for (what, config, zeroed) in cases {
        let out = encoded(&IPV4_UDP_FRAME, &config);
        assert_zeroed_exactly(&out, &baseline, zeroed, what);
    }
}

#[test]
fn each_mask_zeroes_exactly_its_bytes_ipv6_tcp() {
    let baseline = zero_padded(&IPV6_TCP_DEFAULT, 1500);
    let cases: [(&str, PreprocessConfig, &[usize]); 3] = [
        // No IPv4 checksum; TCP checksum at 40 + 16.
        ("mask_checksums", with(|c| c.mask_checksums = true), &[56, 57]),
        ("mask_ports", with(|c| c.mask_ports = true), &[40, 41, 42, 43]),
        // Hop limit.
        ("mask_ttl", with(|c| c.mask_ttl = true), &[7]),
    ];
    for (what, config, zeroed) in cases {
        let out = encoded(&IPV6_TCP_FRAME, &config);
        assert_zeroed_exactly(&out, &baseline, zeroed, what);
    }

    // The flow label is the low 20 bits of the first word: the low nibble of byte 1 and bytes
    // 2..4; the traffic class's low nibble (0xb of 0xbc) stays.
    let out = encoded(&IPV6_TCP_FRAME, &with(|c| c.mask_ip_id = true));
    let mut expected = baseline.clone();
    expected[1..4].copy_from_slice(&[0xb0, 0x00, 0x00]);
    assert_eq!(out, expected);
}

#[test]
fn keeping_addresses_and_sequence_numbers() {
    // IPv4: original addresses at 12..20.
    let out = encoded(&IPV4_TCP_FRAME, &with(|c| c.zero_ip_addresses = false));
    let mut expected = zero_padded(&IPV4_TCP_DEFAULT, 1500);
    expected[12..20].copy_from_slice(&[0xc0, 0xa8, 0x00, 0x68, 0xc0, 0xa8, 0x00, 0x01]);
    assert_eq!(out, expected);

    // IPv4: original sequence and acknowledgement numbers at 24..32.
    let out = encoded(&IPV4_TCP_FRAME, &with(|c| c.zero_tcp_seq_ack = false));
    let mut expected = zero_padded(&IPV4_TCP_DEFAULT, 1500);
    expected[24..32].copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    assert_eq!(out, expected);

    // IPv6: both kept, so the output is the IP packet itself.
    let config = with(|c| {
        c.zero_ip_addresses = false;
        c.zero_tcp_seq_ack = false;
    });
    let out = encoded(&IPV6_TCP_FRAME, &config);
    assert_eq!(out, zero_padded(&IPV6_TCP_FRAME[14..], 1500));
}

// ---------------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------------

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

fn udp_ports(src_port: u16, dst_port: u16) -> Vec<u8> {
    udp4((CLIENT, src_port), (SERVER, dst_port), &[0x11; 24])
}

fn tcp_ports(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp4((CLIENT, src_port), (SERVER, dst_port), flags, payload)
}

fn filtered(frame: &[u8], config: &PreprocessConfig) -> Option<Filter> {
    filter(&parsed(LinkType::ETHERNET, frame), config)
}

#[test]
fn name_lookups_are_filtered_on_either_port() {
    let config = PreprocessConfig::default();
    let dns_like = [
        udp_ports(50000, 53),
        udp_ports(53, 50000),
        tcp_ports(50000, 53, DATA, b"query"),
        udp_ports(5353, 5353),
        udp_ports(50000, 5353),
        udp_ports(5355, 50001),
    ];
    for frame in &dns_like {
        assert_eq!(filtered(frame, &config), Some(Filter::Dns));
    }
    let off = with(|c| c.skip_dns = false);
    for frame in &dns_like {
        assert_eq!(filtered(frame, &off), None);
    }
}

#[test]
fn ntp_is_filtered_over_udp_only() {
    let config = PreprocessConfig::default();
    assert_eq!(filtered(&udp_ports(123, 123), &config), Some(Filter::Ntp));
    assert_eq!(filtered(&udp_ports(40000, 123), &config), Some(Filter::Ntp));
    assert_eq!(filtered(&udp_ports(123, 40000), &config), Some(Filter::Ntp));
    // The documented rule is UDP port 123; a TCP connection to 123 is not NTP.
    assert_eq!(filtered(&tcp_ports(40000, 123, DATA, b"x"), &config), None);
    let off = with(|c| c.skip_ntp = false);
    assert_eq!(filtered(&udp_ports(40000, 123), &off), None);
}

#[test]
fn netbios_ports_137_to_139_are_filtered() {
    let config = PreprocessConfig::default();
    assert_eq!(filtered(&udp_ports(137, 137), &config), Some(Filter::Netbios));
    assert_eq!(filtered(&udp_ports(138, 40000), &config), Some(Filter::Netbios));
    assert_eq!(filtered(&tcp_ports(40000, 139, DATA, b"smb"), &config), Some(Filter::Netbios));
    // Just outside the range.
    assert_eq!(filtered(&udp_ports(136, 40000), &config), None);
    assert_eq!(filtered(&udp_ports(40000, 140), &config), None);
    let off = with(|c| c.skip_netbios = false);
    assert_eq!(filtered(&udp_ports(137, 137), &off), None);
    assert_eq!(filtered(&tcp_ports(40000, 139, DATA, b"smb"), &off), None);
}

#[test]
fn empty_handshake_and_teardown_segments_are_filtered() {
    let config = PreprocessConfig::default();
    let empty = [SYN, ACK, SYN_ACK, FIN_ACK, common::FIN];
    for flags in empty {
        let frame = tcp_ports(40000, 443, flags, &[]);
        assert_eq!(filtered(&frame, &config), Some(Filter::EmptyTcp), "flags {flags:#04x}");
        let off = with(|c| c.skip_empty_tcp = false);
        assert_eq!(filtered(&frame, &off), None, "flags {flags:#04x} with the filter off");
    }
    // With payload they carry application bytes.
    assert_eq!(filtered(&tcp_ports(40000, 443, ACK, b"data"), &config), None);
    assert_eq!(filtered(&tcp_ports(40000, 443, DATA, b"data"), &config), None);
    // The documented rule names SYN, ACK and FIN only: a bare RST is kept.
    assert_eq!(filtered(&tcp_ports(40000, 443, RST, &[]), &config), None);
}

#[test]
fn bare_ack_in_padded_minimum_frame_is_filtered() {
    // 14 + 20 + 20 = 54 bytes, padded by the NIC to 60: the 6 padding bytes are not payload.
    let mut frame = tcp_ports(40000, 443, ACK, &[]);
    assert_eq!(frame.len(), ETHERNET_MIN_FRAME_LEN);
    // Non-zero padding, as some NICs leave, must not count either.
    frame[54..].fill(0xff);
    assert_eq!(filtered(&frame, &PreprocessConfig::default()), Some(Filter::EmptyTcp));

    // The same frame size with 6 real payload bytes is kept.
    let frame = tcp_ports(40000, 443, ACK, b"abcdef");
    assert_eq!(frame.len(), ETHERNET_MIN_FRAME_LEN);
    assert_eq!(filtered(&frame, &PreprocessConfig::default()), None);
}

#[test]
fn ordinary_traffic_is_kept() {
    let config = PreprocessConfig::default();
    assert_eq!(filtered(&udp_ports(50000, 443), &config), None);
    assert_eq!(filtered(&tcp_ports(50000, 443, DATA, b"\x17\x03\x03"), &config), None);
    assert_eq!(filtered(&IPV6_TCP_FRAME, &config), None);
}
