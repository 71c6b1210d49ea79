//! Packet parser tests: frames built with pnet where it has a builder, by hand where it has
//! none (Linux cooked headers, BSD loopback headers, IPv6 extension headers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use combo_plugin::parse::*;
use pnet::packet::MutablePacket;
use pnet::packet::ethernet::{EtherType, EtherTypes, MutableEthernetPacket};
use pnet::packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet::packet::ipv4::MutableIpv4Packet;
use pnet::packet::ipv6::MutableIpv6Packet;
use pnet::packet::tcp::{MutableTcpPacket, TcpFlags, TcpOption};
use pnet::packet::udp::MutableUdpPacket;
use pnet::packet::vlan::MutableVlanPacket;
use pnet::util::MacAddr;

const SRC_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const SRC_PORT: u16 = 40000;
const DST_PORT: u16 = 443;

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERNET_MIN_FRAME_LEN: usize = 60;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTHENTICATION: u8 = 51;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
const IPV6_NO_NEXT_HEADER: u8 = 59;
const PROTO_ESP: u8 = 50;

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// A TCP segment with the given flags, options (padded to 4 bytes) and payload size.
fn tcp_segment(flags: u8, options: &[TcpOption], payload_len: usize) -> Vec<u8> {
    let options_len: usize = options.iter().map(tcp_option_len).sum();
    let header_len = TCP_HEADER_LEN + options_len.div_ceil(4) * 4;
    let mut bytes = vec![0u8; header_len + payload_len];
    let mut tcp = MutableTcpPacket::new(&mut bytes).expect("buffer holds a TCP header");
    tcp.set_source(SRC_PORT);
    tcp.set_destination(DST_PORT);
    tcp.set_sequence(1);
    tcp.set_acknowledgement(1);
    tcp.set_data_offset((header_len / 4) as u8);
    tcp.set_flags(flags);
    tcp.set_window(65535);
    tcp.set_options(options);
    bytes
}

fn tcp_option_len(option: &TcpOption) -> usize {
    // Kind byte, plus length byte and data for every option but NOP and EOL.
    let mut scratch = vec![0u8; 64];
    let mut tcp = MutableTcpPacket::new(&mut scratch).expect("scratch holds a TCP header");
    tcp.set_data_offset(15);
    tcp.set_options(std::slice::from_ref(option));
    match scratch[TCP_HEADER_LEN] {
        0 | 1 => 1,
        _ => usize::from(scratch[TCP_HEADER_LEN + 1]),
    }
}

fn udp_datagram(payload_len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; UDP_HEADER_LEN + payload_len];
    let mut udp = MutableUdpPacket::new(&mut bytes).expect("buffer holds a UDP header");
    udp.set_source(SRC_PORT);
    udp.set_destination(DST_PORT);
    udp.set_length((UDP_HEADER_LEN + payload_len) as u16);
    bytes
}

/// An IPv4 packet around `transport`, with `options` (a multiple of 4 bytes) after the fixed
/// header.
fn ipv4_with_options(protocol: u8, options: &[u8], transport: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let header_len = IPV4_HEADER_LEN + options.len();
    let mut bytes = vec![0u8; header_len + transport.len()];
    let mut ip = MutableIpv4Packet::new(&mut bytes).expect("buffer holds an IPv4 header");
    ip.set_version(4);
    ip.set_header_length((header_len / 4) as u8);
    ip.set_total_length((header_len + transport.len()) as u16);
    ip.set_ttl(64);
    ip.set_next_level_protocol(IpNextHeaderProtocol(protocol));
    ip.set_source(SRC_V4);
    ip.set_destination(DST_V4);
    ip.packet_mut()[IPV4_HEADER_LEN..header_len].copy_from_slice(options);
    ip.packet_mut()[header_len..].copy_from_slice(transport);
    bytes
}

fn ipv4(protocol: u8, transport: &[u8]) -> Vec<u8> {
    ipv4_with_options(protocol, &[], transport)
}

/// An IPv6 packet whose payload (extension headers and transport) is `payload`.
fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; IPV6_HEADER_LEN + payload.len()];
    let mut ip = MutableIpv6Packet::new(&mut bytes).expect("buffer holds an IPv6 header");
    ip.set_version(6);
    // Above 65535 bytes the field stays 0, as in a jumbogram or an offloaded capture.
    ip.set_payload_length(u16::try_from(payload.len()).unwrap_or(0));
    ip.set_next_header(IpNextHeaderProtocol(next_header));
    ip.set_hop_limit(64);
    ip.set_source(SRC_V6);
    ip.set_destination(DST_V6);
    bytes[IPV6_HEADER_LEN..].copy_from_slice(payload);
    bytes
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options) of
/// `8 * (1 + length_units)` bytes.
fn extension_header(next_header: u8, length_units: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 8 * (1 + usize::from(length_units))];
    bytes[0] = next_header;
    bytes[1] = length_units;
    // PadN option over the rest, so hop-by-hop and destination options are well formed.
    bytes[2] = 1;
    bytes[3] = (bytes.len() - 4) as u8;
    bytes
}

/// An IPv6 fragment header; `offset` in 8-byte units.
fn fragment_header(next_header: u8, offset: u16, more_fragments: bool) -> Vec<u8> {
    let offset_and_flags = (offset << 3) | u16::from(more_fragments);
    let mut bytes = vec![next_header, 0];
    bytes.extend_from_slice(&offset_and_flags.to_be_bytes());
    bytes.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    bytes
}

/// An authentication header with `icv_words` 4-byte words of integrity check value.
fn authentication_header(next_header: u8, icv_words: u8) -> Vec<u8> {
    // Length field: total length in 4-byte words minus 2; the fixed part is 3 words.
    let mut bytes = vec![next_header, 1 + icv_words, 0, 0];
    bytes.extend_from_slice(&[0u8; 8]); // SPI and sequence number
    bytes.extend(std::iter::repeat_n(0u8, 4 * usize::from(icv_words)));
    bytes
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An Ethernet frame around `payload`, padded to the 60-byte minimum like a NIC does.
fn ethernet(ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let len = (ETHERNET_HEADER_LEN + payload.len()).max(ETHERNET_MIN_FRAME_LEN);
    let mut bytes = vec![0u8; len];
    let mut frame = MutableEthernetPacket::new(&mut bytes).expect("buffer holds Ethernet");
    frame.set_destination(MacAddr::new(0, 1, 2, 3, 4, 5));
    frame.set_source(MacAddr::new(0, 6, 7, 8, 9, 10));
    frame.set_ethertype(ethertype);
    frame.packet_mut()[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + payload.len()]
        .copy_from_slice(payload);
    bytes
}

/// A 4-byte VLAN tag body (TCI and inner ethertype) followed by `payload`.
fn vlan(vlan_id: u16, inner: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; 4 + payload.len()];
    let mut tag = MutableVlanPacket::new(&mut bytes).expect("buffer holds a VLAN tag");
    tag.set_vlan_identifier(vlan_id);
    tag.set_ethertype(inner);
    tag.set_payload(payload);
    bytes
}

/// Linux cooked capture v1 header (16 bytes) with `protocol` at bytes 14..16.
fn linux_sll(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![
        0, 0, // packet type: to us
        0, 1, // ARPHRD_ETHER
        0, 6, // link-layer address length
        0, 1, 2, 3, 4, 5, 0, 0, // address, padded to 8
    ];
    bytes.extend_from_slice(&protocol.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Linux cooked capture v2 header (20 bytes) with `protocol` at bytes 0..2.
fn linux_sll2(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = protocol.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[
        0, 0, // reserved
        0, 0, 0, 2, // interface index
        0, 1, // ARPHRD_ETHER
        4, // packet type: outgoing
        6, // link-layer address length
        0, 1, 2, 3, 4, 5, 0, 0, // address, padded to 8
    ]);
    bytes.extend_from_slice(payload);
    bytes
}

/// BSD loopback header: the family as 4 raw bytes, then `payload`.
fn bsd_loopback(family_bytes: [u8; 4], payload: &[u8]) -> Vec<u8> {
    concat(&[&family_bytes, payload])
}

fn parse_full(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, Skip> {
    parse(link, frame, frame.len() as u32)
}

fn ether_ipv4_tcp(flags: u8, payload_len: usize) -> Vec<u8> {
    let ip = ipv4(PROTO_TCP, &tcp_segment(flags, &[], payload_len));
    ethernet(EtherTypes::Ipv4, &ip)
}

/// Checks shared by every successful TCP-over-IPv4 parse of the standard test addresses.
fn assert_ipv4_tcp(packet: &Packet<'_>, payload_len: usize) {
    assert_eq!(packet.ip_version, 4);
    assert_eq!(packet.protocol, PROTO_TCP);
    assert_eq!(packet.src, IpAddr::V4(SRC_V4));
    assert_eq!(packet.dst, IpAddr::V4(DST_V4));
    assert_eq!(packet.ports(), (SRC_PORT, DST_PORT));
    assert_eq!(packet.payload_len, payload_len);
    assert!(!packet.snapped);
}

fn assert_ipv6_udp(packet: &Packet<'_>, transport_offset: usize, payload_len: usize) {
    assert_eq!(packet.ip_version, 6);
    assert_eq!(packet.protocol, PROTO_UDP);
    assert_eq!(packet.src, IpAddr::V6(SRC_V6));
    assert_eq!(packet.dst, IpAddr::V6(DST_V6));
    assert_eq!(packet.transport, Transport::Udp { src_port: SRC_PORT, dst_port: DST_PORT });
    assert_eq!(packet.transport_offset, transport_offset);
    assert_eq!(packet.payload_len, payload_len);
    assert_eq!(packet.ip.len(), transport_offset + UDP_HEADER_LEN + payload_len);
    assert!(!packet.snapped);
}

// ---------------------------------------------------------------------------------------------
// Link layers
// ---------------------------------------------------------------------------------------------

#[test]
fn ethernet_ipv4_tcp() {
    let frame = ether_ipv4_tcp(TcpFlags::PSH | TcpFlags::ACK, 100);
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("valid frame");
    assert_ipv4_tcp(&packet, 100);
    assert_eq!(packet.transport_offset, IPV4_HEADER_LEN);
    assert_eq!(packet.ip.len(), IPV4_HEADER_LEN + TCP_HEADER_LEN + 100);
    assert_eq!(packet.ip, &frame[ETHERNET_HEADER_LEN..]);
    assert_eq!(packet.transport_header_len(), TCP_HEADER_LEN);
    match packet.transport {
        Transport::Tcp { flags, header_len, .. } => {
            assert_eq!(flags, TCP_ACK | 0x08);
            assert_eq!(header_len, TCP_HEADER_LEN);
        }
        other => panic!("expected TCP, got {other:?}"),
    }
}

#[test]
fn ethernet_ipv6_udp() {
    let frame = ethernet(EtherTypes::Ipv6, &ipv6(PROTO_UDP, &udp_datagram(33)));
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("valid frame");
    assert_ipv6_udp(&packet, IPV6_HEADER_LEN, 33);
    assert_eq!(packet.transport_header_len(), UDP_HEADER_LEN);
}

#[test]
fn ethernet_padding_is_not_payload() {
    // 14 + 20 + 20 = 54 bytes, padded by the NIC to 60.
    let frame = ether_ipv4_tcp(TcpFlags::ACK, 0);
    assert_eq!(frame.len(), ETHERNET_MIN_FRAME_LEN);
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("valid frame");
    assert_ipv4_tcp(&packet, 0);
    assert_eq!(packet.ip.len(), IPV4_HEADER_LEN + TCP_HEADER_LEN);

    // The same for a 4-byte FCS trailer on a larger frame.
    let mut with_fcs = ether_ipv4_tcp(TcpFlags::ACK, 200);
    with_fcs.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let packet = parse_full(LinkType::ETHERNET, &with_fcs).expect("valid frame");
    assert_ipv4_tcp(&packet, 200);
    assert_eq!(packet.ip.len(), IPV4_HEADER_LEN + TCP_HEADER_LEN + 200);
}

#[test]
fn vlan_tag_8021q() {
    let ip = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::SYN, &[], 0));
    let frame = ethernet(EtherTypes::Vlan, &vlan(100, EtherTypes::Ipv4, &ip));
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("valid frame");
    assert_ipv4_tcp(&packet, 0);
    assert_eq!(packet.ip, &ip[..]);
}

#[test]
fn vlan_qinq_8021ad_and_legacy() {
    let ip = ipv6(PROTO_UDP, &udp_datagram(5));
    let inner = vlan(20, EtherTypes::Ipv6, &ip);
    for outer_tpid in [EtherTypes::PBridge, EtherTypes::QinQ] {
        let frame = ethernet(outer_tpid, &vlan(10, EtherTypes::Vlan, &inner));
        let packet = parse_full(LinkType::ETHERNET, &frame).expect("valid frame");
        assert_ipv6_udp(&packet, IPV6_HEADER_LEN, 5);
    }
    // Legacy 0x9100 alone, and three stacked tags.
    let frame = ethernet(EtherTypes::QinQ, &vlan(10, EtherTypes::Ipv6, &ip));
    assert!(parse_full(LinkType::ETHERNET, &frame).is_ok());
    let three = vlan(1, EtherTypes::PBridge, &vlan(2, EtherTypes::Vlan, &inner));
    let frame = ethernet(EtherTypes::PBridge, &three);
    assert_ipv6_udp(&parse_full(LinkType::ETHERNET, &frame).expect("valid"), IPV6_HEADER_LEN, 5);
}

#[test]
fn vlan_tag_around_arp_is_non_ip() {
    let frame = ethernet(EtherTypes::Vlan, &vlan(7, EtherTypes::Arp, &[0u8; 28]));
    assert_eq!(parse_full(LinkType::ETHERNET, &frame).unwrap_err(), Skip::NonIp);
}

#[test]
fn non_ip_ethertypes() {
    for ethertype in [EtherTypes::Arp, EtherTypes::Lldp, EtherTypes::Mpls, EtherType(0x05dc)] {
        let frame = ethernet(ethertype, &[0u8; 46]);
        assert_eq!(parse_full(LinkType::ETHERNET, &frame).unwrap_err(), Skip::NonIp);
    }
}

#[test]
fn raw_ip_link_types_pick_version_from_nibble() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 10));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(10));
    for link in [LinkType::RAW, LinkType::RAW_BSD, LinkType::RAW_OPENBSD] {
        assert_ipv4_tcp(&parse_full(link, &v4).expect("raw IPv4"), 10);
        assert_ipv6_udp(&parse_full(link, &v6).expect("raw IPv6"), IPV6_HEADER_LEN, 10);
        let mut bad_version = v4.clone();
        bad_version[0] = 0x55;
        assert_eq!(parse_full(link, &bad_version).unwrap_err(), Skip::BadHeader);
    }
}

#[test]
fn ipv4_and_ipv6_link_types_insist_on_their_version() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 10));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(10));
    assert_ipv4_tcp(&parse_full(LinkType::IPV4, &v4).expect("IPv4"), 10);
    assert_ipv6_udp(&parse_full(LinkType::IPV6, &v6).expect("IPv6"), IPV6_HEADER_LEN, 10);
    assert_eq!(parse_full(LinkType::IPV4, &v6).unwrap_err(), Skip::BadHeader);
    assert_eq!(parse_full(LinkType::IPV6, &v4).unwrap_err(), Skip::BadHeader);
}

#[test]
fn ethertype_and_version_nibble_must_agree() {
    let v6 = ipv6(PROTO_UDP, &udp_datagram(10));
    let frame = ethernet(EtherTypes::Ipv4, &v6);
    assert_eq!(parse_full(LinkType::ETHERNET, &frame).unwrap_err(), Skip::BadHeader);
}

#[test]
fn linux_cooked_v1() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 7));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(7));
    let frame = linux_sll(0x0800, &v4);
    assert_ipv4_tcp(&parse_full(LinkType::LINUX_SLL, &frame).expect("SLL IPv4"), 7);
    let frame = linux_sll(0x86dd, &v6);
    let packet = parse_full(LinkType::LINUX_SLL, &frame).expect("SLL IPv6");
    assert_ipv6_udp(&packet, IPV6_HEADER_LEN, 7);
    // A VLAN tag the kernel did not strip.
    let frame = linux_sll(0x8100, &vlan(5, EtherTypes::Ipv4, &v4));
    assert_ipv4_tcp(&parse_full(LinkType::LINUX_SLL, &frame).expect("SLL VLAN"), 7);
    let frame = linux_sll(0x0806, &[0u8; 28]);
    assert_eq!(parse_full(LinkType::LINUX_SLL, &frame).unwrap_err(), Skip::NonIp);
}

#[test]
fn linux_cooked_v2() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 7));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(7));
    let frame = linux_sll2(0x0800, &v4);
    assert_ipv4_tcp(&parse_full(LinkType::LINUX_SLL2, &frame).expect("SLL2 IPv4"), 7);
    let frame = linux_sll2(0x86dd, &v6);
    let packet = parse_full(LinkType::LINUX_SLL2, &frame).expect("SLL2 IPv6");
    assert_ipv6_udp(&packet, IPV6_HEADER_LEN, 7);
    let frame = linux_sll2(0x88a8, &vlan(5, EtherTypes::Vlan, &vlan(6, EtherTypes::Ipv4, &v4)));
    assert_ipv4_tcp(&parse_full(LinkType::LINUX_SLL2, &frame).expect("SLL2 QinQ"), 7);
    let frame = linux_sll2(0x0806, &[0u8; 28]);
    assert_eq!(parse_full(LinkType::LINUX_SLL2, &frame).unwrap_err(), Skip::NonIp);
}

#[test]
fn bsd_null_family_in_either_byte_order() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 3));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(3));
    for family_bytes in [2u32.to_le_bytes(), 2u32.to_be_bytes()] {
        let frame = bsd_loopback(family_bytes, &v4);
        assert_ipv4_tcp(&parse_full(LinkType::NULL, &frame).expect("NULL IPv4"), 3);
    }
    for family in [24u32, 28, 30] {
        for family_bytes in [family.to_le_bytes(), family.to_be_bytes()] {
            let frame = bsd_loopback(family_bytes, &v6);
            let packet = parse_full(LinkType::NULL, &frame).expect("NULL IPv6");
            assert_ipv6_udp(&packet, IPV6_HEADER_LEN, 3);
        }
    }
    // AF_APPLETALK-ish unknown family.
    let frame = bsd_loopback(16u32.to_le_bytes(), &v4);
    assert_eq!(parse_full(LinkType::NULL, &frame).unwrap_err(), Skip::NonIp);
}

#[test]
fn openbsd_loop_family_is_big_endian() {
    let v4 = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 3));
    let v6 = ipv6(PROTO_UDP, &udp_datagram(3));
    let frame = bsd_loopback(2u32.to_be_bytes(), &v4);
    assert_ipv4_tcp(&parse_full(LinkType::LOOP, &frame).expect("LOOP IPv4"), 3);
    let frame = bsd_loopback(24u32.to_be_bytes(), &v6);
    assert_ipv6_udp(&parse_full(LinkType::LOOP, &frame).expect("LOOP IPv6"), IPV6_HEADER_LEN, 3);
    let frame = bsd_loopback(2u32.to_le_bytes(), &v4);
    assert_eq!(parse_full(LinkType::LOOP, &frame).unwrap_err(), Skip::NonIp);
}

#[test]
fn unknown_link_types_are_unsupported() {
    let frame = ether_ipv4_tcp(TcpFlags::ACK, 0);
    for link in [LinkType(105), LinkType(127), LinkType(9999), LinkType(u32::MAX)] {
        assert_eq!(parse_full(link, &frame).unwrap_err(), Skip::UnsupportedLink);
    }
    assert_eq!(parse_full(LinkType(105), &[]).unwrap_err(), Skip::UnsupportedLink);
}

#[test]
fn strip_link_layer_reports_hint_and_rest() {
    let ip = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 0));
    let frame = linux_sll2(0x0800, &ip);
    let (hint, rest) = strip_link_layer(LinkType::LINUX_SLL2, &frame).expect("SLL2");
    assert_eq!(hint, IpVersionHint::V4);
    assert_eq!(rest, &ip[..]);
    let (hint, _) = strip_link_layer(LinkType::RAW, &ip).expect("raw");
    assert_eq!(hint, IpVersionHint::FromVersionNibble);
}

// ---------------------------------------------------------------------------------------------
// IP and transport headers
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv4_with_options_moves_transport_offset() {
    // Router alert (4 bytes), then NOPs and an end-of-list up to the maximum IHL of 15.
    let router_alert = [148, 4, 0, 0];
    let transport = tcp_segment(TcpFlags::ACK, &[], 12);
    let ip = ipv4_with_options(PROTO_TCP, &router_alert, &transport);
    let packet = parse_full(LinkType::RAW, &ip).expect("IHL 6");
    assert_ipv4_tcp(&packet, 12);
    assert_eq!(packet.transport_offset, 24);

    let mut longest = [1u8; 40];
    longest[39] = 0;
    let ip = ipv4_with_options(PROTO_TCP, &longest, &transport);
    let packet = parse_full(LinkType::RAW, &ip).expect("IHL 15");
    assert_ipv4_tcp(&packet, 12);
    assert_eq!(packet.transport_offset, 60);
}

#[test]
fn tcp_with_options() {
    let options = [
        TcpOption::mss(1460),
        TcpOption::sack_perm(),
        TcpOption::timestamp(1, 0),
        TcpOption::nop(),
        TcpOption::wscale(7),
    ];
    let segment = tcp_segment(TcpFlags::SYN, &options, 0);
    assert_eq!(segment.len(), 40);
    let frame = ethernet(EtherTypes::Ipv4, &ipv4(PROTO_TCP, &segment));
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("SYN with options");
    assert_ipv4_tcp(&packet, 0);
    assert_eq!(packet.transport_header_len(), 40);
    assert_eq!(
        packet.transport,
        Transport::Tcp { src_port: SRC_PORT, dst_port: DST_PORT, flags: TCP_SYN, header_len: 40 }
    );

    let segment = tcp_segment(TcpFlags::ACK, &[TcpOption::timestamp(5, 6)], 500);
    let ip = ipv6(PROTO_TCP, &segment);
    let packet = parse_full(LinkType::RAW, &ip).expect("IPv6 TCP with timestamps");
    assert_eq!(packet.transport_header_len(), 32);
    assert_eq!(packet.payload_len, 500);
}

#[test]
fn udp_over_ipv4() {
    let ip = ipv4(PROTO_UDP, &udp_datagram(512));
    let packet = parse_full(LinkType::IPV4, &ip).expect("UDP");
    assert_eq!(packet.transport, Transport::Udp { src_port: SRC_PORT, dst_port: DST_PORT });
    assert_eq!(packet.payload_len, 512);
    assert_eq!(packet.protocol, PROTO_UDP);
    // An empty UDP datagram.
    let ip = ipv4(PROTO_UDP, &udp_datagram(0));
    assert_eq!(parse_full(LinkType::IPV4, &ip).expect("empty UDP").payload_len, 0);
}

#[test]
fn ipv6_each_extension_header() {
    let udp = udp_datagram(9);
    let cases: [(u8, Vec<u8>); 5] = [
        (IPV6_HOP_BY_HOP, extension_header(PROTO_UDP, 0)),
        (IPV6_ROUTING, extension_header(PROTO_UDP, 2)),
        (IPV6_DESTINATION_OPTIONS, extension_header(PROTO_UDP, 1)),
        (IPV6_AUTHENTICATION, authentication_header(PROTO_UDP, 3)),
        // Atomic fragment (offset 0, no more fragments): the whole packet, parsed (RFC 6946).
        (IPV6_FRAGMENT, fragment_header(PROTO_UDP, 0, false)),
    ];
    for (kind, header) in cases {
        let ip = ipv6(kind, &concat(&[&header, &udp]));
        let packet = parse_full(LinkType::IPV6, &ip).expect("extension header");
        assert_ipv6_udp(&packet, IPV6_HEADER_LEN + header.len(), 9);
    }
}

#[test]
fn ipv6_extension_header_chain() {
    let headers = concat(&[
        &extension_header(IPV6_DESTINATION_OPTIONS, 0),
        &extension_header(IPV6_ROUTING, 1),
        &extension_header(IPV6_AUTHENTICATION, 0),
        &authentication_header(PROTO_TCP, 1),
    ]);
    let segment = tcp_segment(TcpFlags::ACK, &[], 30);
    let frame = ethernet(EtherTypes::Ipv6, &ipv6(IPV6_HOP_BY_HOP, &concat(&[&headers, &segment])));
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("chain");
    assert_eq!(packet.transport_offset, IPV6_HEADER_LEN + headers.len());
    assert_eq!(packet.protocol, PROTO_TCP);
    assert_eq!(packet.payload_len, 30);
}

#[test]
fn ipv6_too_many_extension_headers_is_bad() {
    let build = |count: usize| {
        let mut payload = Vec::new();
        for index in 0..count {
            let next = if index + 1 == count { PROTO_UDP } else { IPV6_DESTINATION_OPTIONS };
            payload.extend_from_slice(&extension_header(next, 0));
        }
        payload.extend_from_slice(&udp_datagram(0));
        ipv6(IPV6_DESTINATION_OPTIONS, &payload)
    };
    let eight = build(8);
    let packet = parse_full(LinkType::RAW, &eight).expect("eight extension headers");
    assert_eq!(packet.transport_offset, IPV6_HEADER_LEN + 8 * 8);
    assert_eq!(parse_full(LinkType::RAW, &build(9)).unwrap_err(), Skip::BadHeader);
}

#[test]
fn ipv6_fragments_are_skipped() {
    let udp = udp_datagram(100);
    let first = ipv6(IPV6_FRAGMENT, &concat(&[&fragment_header(PROTO_UDP, 0, true), &udp]));
    assert_eq!(parse_full(LinkType::RAW, &first).unwrap_err(), Skip::Fragment);
    let later = ipv6(IPV6_FRAGMENT, &concat(&[&fragment_header(PROTO_UDP, 12, false), &udp]));
    assert_eq!(parse_full(LinkType::RAW, &later).unwrap_err(), Skip::Fragment);
    // Behind a hop-by-hop header.
    let payload =
        concat(&[&extension_header(IPV6_FRAGMENT, 0), &fragment_header(PROTO_UDP, 1, true), &udp]);
    let ip = ipv6(IPV6_HOP_BY_HOP, &payload);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::Fragment);
}

#[test]
fn ipv4_fragments_are_skipped() {
    let segment = tcp_segment(TcpFlags::ACK, &[], 100);
    let mut first = ipv4(PROTO_TCP, &segment);
    MutableIpv4Packet::new(&mut first).expect("IPv4").set_flags(0b001); // MF
    assert_eq!(parse_full(LinkType::RAW, &first).unwrap_err(), Skip::Fragment);

    let mut later = ipv4(PROTO_TCP, &segment[..40]);
    MutableIpv4Packet::new(&mut later).expect("IPv4").set_fragment_offset(185);
    assert_eq!(parse_full(LinkType::RAW, &later).unwrap_err(), Skip::Fragment);

    // Don't-fragment alone is a whole packet.
    let mut whole = ipv4(PROTO_TCP, &segment);
    MutableIpv4Packet::new(&mut whole).expect("IPv4").set_flags(0b010); // DF
    assert_ipv4_tcp(&parse_full(LinkType::RAW, &whole).expect("DF"), 100);
}

#[test]
fn other_transports() {
    let icmp = ipv4(PROTO_ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(parse_full(LinkType::RAW, &icmp).unwrap_err(), Skip::OtherTransport);
    let frame = ethernet(EtherTypes::Ipv4, &icmp);
    assert_eq!(parse_full(LinkType::ETHERNET, &frame).unwrap_err(), Skip::OtherTransport);
    let gre = ipv4(IpNextHeaderProtocols::Gre.0, &[0u8; 4]);
    assert_eq!(parse_full(LinkType::RAW, &gre).unwrap_err(), Skip::OtherTransport);
    for next_header in [PROTO_ICMPV6, IPV6_NO_NEXT_HEADER, PROTO_ESP] {
        let ip = ipv6(next_header, &[128, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::OtherTransport);
    }
    let ip = ipv6(IPV6_HOP_BY_HOP, &concat(&[&extension_header(PROTO_ICMPV6, 0), &[0u8; 8]]));
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::OtherTransport);
}

// ---------------------------------------------------------------------------------------------
// Capture length against header length
// ---------------------------------------------------------------------------------------------

#[test]
fn snapped_capture_keeps_header_lengths() {
    let frame = ether_ipv4_tcp(TcpFlags::ACK, 1000);
    let wire_len = frame.len() as u32;
    let captured = &frame[..96];
    let packet = parse(LinkType::ETHERNET, captured, wire_len).expect("snapped frame");
    assert!(packet.snapped);
    assert_eq!(packet.payload_len, 1000);
    assert_eq!(packet.ip, &frame[ETHERNET_HEADER_LEN..96]);

    // Snapped exactly at the end of the TCP header.
    let captured = &frame[..ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN];
    let packet = parse(LinkType::ETHERNET, captured, wire_len).expect("headers only");
    assert!(packet.snapped);
    assert_eq!(packet.payload_len, 1000);

    // IPv6 with an extension header.
    let ip = ipv6(IPV6_ROUTING, &concat(&[&extension_header(PROTO_UDP, 0), &udp_datagram(900)]));
    let captured = &ip[..IPV6_HEADER_LEN + 8 + UDP_HEADER_LEN + 4];
    let packet = parse(LinkType::RAW, captured, ip.len() as u32).expect("snapped IPv6");
    assert!(packet.snapped);
    assert_eq!(packet.payload_len, 900);
    assert_eq!(packet.ip.len(), captured.len());
}

#[test]
fn zero_ip_length_falls_back_to_wire_length() {
    // Segmentation offload: IPv4 total length 0, the capture holds the whole super-packet.
    let mut ip = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 3000));
    MutableIpv4Packet::new(&mut ip).expect("IPv4").set_total_length(0);
    let frame = ethernet(EtherTypes::Ipv4, &ip);
    let packet = parse_full(LinkType::ETHERNET, &frame).expect("TSO capture");
    assert_ipv4_tcp(&packet, 3000);

    // The same, snapped: the wire length still gives the payload length.
    let packet = parse(LinkType::ETHERNET, &frame[..200], frame.len() as u32).expect("snapped");
    assert!(packet.snapped);
    assert_eq!(packet.payload_len, 3000);

    // An orig_len below the captured length is not believed.
    let packet = parse(LinkType::ETHERNET, &frame, 10).expect("small orig_len");
    assert_eq!(packet.payload_len, 3000);

    // IPv6 payload length 0 (BIG TCP): a 70000-byte packet.
    let udp_payload_len = 70000 - IPV6_HEADER_LEN - UDP_HEADER_LEN;
    let ip = ipv6(PROTO_UDP, &udp_datagram(udp_payload_len));
    let packet = parse_full(LinkType::RAW, &ip).expect("IPv6 payload length 0");
    assert_eq!(packet.payload_len, udp_payload_len);
    assert_eq!(packet.ip.len(), 70000);
}

// ---------------------------------------------------------------------------------------------
// Truncation and impossible headers
// ---------------------------------------------------------------------------------------------

fn assert_truncated(link: LinkType, frame: &[u8], cut: usize) {
    let captured = &frame[..cut];
    assert_eq!(
        parse(link, captured, frame.len() as u32).unwrap_err(),
        Skip::Truncated,
        "{link:?} cut at {cut} of {}",
        frame.len()
    );
}

#[test]
fn truncated_link_headers() {
    let ip = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::ACK, &[], 0));
    assert_truncated(LinkType::ETHERNET, &ether_ipv4_tcp(TcpFlags::ACK, 0), 13);
    assert_truncated(LinkType::ETHERNET, &ether_ipv4_tcp(TcpFlags::ACK, 0), 0);
    let tagged = ethernet(EtherTypes::Vlan, &vlan(3, EtherTypes::Ipv4, &ip));
    assert_truncated(LinkType::ETHERNET, &tagged, ETHERNET_HEADER_LEN + 3);
    assert_truncated(LinkType::LINUX_SLL, &linux_sll(0x0800, &ip), 15);
    assert_truncated(LinkType::LINUX_SLL2, &linux_sll2(0x0800, &ip), 19);
    assert_truncated(LinkType::NULL, &bsd_loopback(2u32.to_le_bytes(), &ip), 3);
    assert_truncated(LinkType::LOOP, &bsd_loopback(2u32.to_be_bytes(), &ip), 2);
    assert_truncated(LinkType::RAW, &ip, 0);
}

#[test]
fn truncated_ip_headers() {
    let transport = tcp_segment(TcpFlags::ACK, &[], 0);
    let ip = ipv4(PROTO_TCP, &transport);
    assert_truncated(LinkType::RAW, &ip, 1);
    assert_truncated(LinkType::RAW, &ip, IPV4_HEADER_LEN - 1);
    let with_options = ipv4_with_options(PROTO_TCP, &[1, 1, 1, 1, 1, 1, 1, 0], &transport);
    assert_truncated(LinkType::RAW, &with_options, IPV4_HEADER_LEN + 4);

    let v6 = ipv6(PROTO_UDP, &udp_datagram(0));
    assert_truncated(LinkType::RAW, &v6, IPV6_HEADER_LEN - 1);
    let v6_ext =
        ipv6(IPV6_HOP_BY_HOP, &concat(&[&extension_header(PROTO_UDP, 1), &udp_datagram(0)]));
    assert_truncated(LinkType::RAW, &v6_ext, IPV6_HEADER_LEN + 1);
    assert_truncated(LinkType::RAW, &v6_ext, IPV6_HEADER_LEN + 15);
    let v6_frag =
        ipv6(IPV6_FRAGMENT, &concat(&[&fragment_header(PROTO_UDP, 0, true), &udp_datagram(0)]));
    assert_truncated(LinkType::RAW, &v6_frag, IPV6_HEADER_LEN + 7);
}

#[test]
fn truncated_transport_headers() {
    let frame = ether_ipv4_tcp(TcpFlags::ACK, 100);
    let ip_start = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    assert_truncated(LinkType::ETHERNET, &frame, ip_start);
    assert_truncated(LinkType::ETHERNET, &frame, ip_start + TCP_HEADER_LEN - 1);

    let options = [TcpOption::mss(1460), TcpOption::nop(), TcpOption::wscale(7)];
    let ip = ipv4(PROTO_TCP, &tcp_segment(TcpFlags::SYN, &options, 0));
    assert_truncated(LinkType::RAW, &ip, IPV4_HEADER_LEN + TCP_HEADER_LEN + 4);

    let ip = ipv6(PROTO_UDP, &udp_datagram(20));
    assert_truncated(LinkType::RAW, &ip, IPV6_HEADER_LEN + UDP_HEADER_LEN - 1);
}

#[test]
fn bad_ipv4_header_lengths() {
    let transport = tcp_segment(TcpFlags::ACK, &[], 10);
    for ihl in 0..5u8 {
        let mut ip = ipv4(PROTO_TCP, &transport);
        MutableIpv4Packet::new(&mut ip).expect("IPv4").set_header_length(ihl);
        assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader, "IHL {ihl}");
    }
    // Total length shorter than the header.
    let mut ip = ipv4(PROTO_TCP, &transport);
    MutableIpv4Packet::new(&mut ip).expect("IPv4").set_total_length(19);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    let mut ip = ipv4_with_options(PROTO_TCP, &[1, 1, 1, 0], &transport);
    MutableIpv4Packet::new(&mut ip).expect("IPv4").set_total_length(22);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
}

#[test]
fn bad_transport_header_lengths() {
    // TCP data offset below 5.
    for data_offset in 0..5u8 {
        let mut segment = tcp_segment(TcpFlags::ACK, &[], 10);
        MutableTcpPacket::new(&mut segment).expect("TCP").set_data_offset(data_offset);
        let ip = ipv4(PROTO_TCP, &segment);
        assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    }
    // TCP header longer than the IP payload (data offset 15 = 60 bytes, 30 bytes of payload).
    let mut segment = tcp_segment(TcpFlags::ACK, &[], 10);
    MutableTcpPacket::new(&mut segment).expect("TCP").set_data_offset(15);
    let ip = ipv4(PROTO_TCP, &segment);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    // ... even when the capture also ends early.
    assert_eq!(parse(LinkType::RAW, &ip[..45], 1500).unwrap_err(), Skip::BadHeader);

    // IP payload too short for a TCP header or a UDP header.
    let ip = ipv4(PROTO_TCP, &[0u8; 12]);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    let ip = ipv4(PROTO_UDP, &[0u8; 7]);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    let ip = ipv6(PROTO_UDP, &[0u8; 4]);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
}

#[test]
fn ipv6_extension_header_past_payload_length_is_bad() {
    let mut ip = ipv6(IPV6_ROUTING, &concat(&[&extension_header(PROTO_UDP, 4), &[0u8; 8]]));
    // Claim a payload shorter than the 40-byte routing header.
    MutableIpv6Packet::new(&mut ip).expect("IPv6").set_payload_length(24);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
    // Payload length so short that the extension header's length field is outside it.
    MutableIpv6Packet::new(&mut ip).expect("IPv6").set_payload_length(1);
    assert_eq!(parse_full(LinkType::RAW, &ip).unwrap_err(), Skip::BadHeader);
}

// ---------------------------------------------------------------------------------------------
// No panics on any input
// ---------------------------------------------------------------------------------------------

const EVERY_LINK_TYPE: [LinkType; 12] = [
    LinkType::NULL,
    LinkType::ETHERNET,
    LinkType::RAW_BSD,
    LinkType::RAW_OPENBSD,
    LinkType::RAW,
    LinkType::LOOP,
    LinkType::LINUX_SLL,
    LinkType::IPV4,
    LinkType::IPV6,
    LinkType::LINUX_SLL2,
    LinkType(105),
    LinkType(u32::MAX),
];

/// xorshift64: deterministic, good enough to spray bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Parse under every link type; on success, check the invariants callers rely on.
fn parse_everywhere(frame: &[u8], orig_len: u32) {
    for link in EVERY_LINK_TYPE {
        if let Ok(packet) = parse(link, frame, orig_len) {
            let frame_range = frame.as_ptr_range();
            assert!(frame_range.contains(&packet.ip.as_ptr()) || packet.ip.is_empty());
            assert!(packet.ip.as_ptr_range().end <= frame_range.end);
            assert!(packet.transport_offset + packet.transport_header_len() <= packet.ip.len());
            assert!(packet.ip_version == 4 || packet.ip_version == 6);
            assert!(packet.protocol == PROTO_TCP || packet.protocol == PROTO_UDP);
        }
    }
}

fn sample_frames() -> Vec<Vec<u8>> {
    let v4 = ipv4_with_options(
        PROTO_TCP,
        &[148, 4, 0, 0],
        &tcp_segment(TcpFlags::SYN, &[TcpOption::mss(1400), TcpOption::wscale(3)], 20),
    );
    let v6_payload = concat(&[
        &extension_header(IPV6_ROUTING, 1),
        &extension_header(IPV6_FRAGMENT, 0),
        &fragment_header(IPV6_AUTHENTICATION, 0, false),
        &authentication_header(PROTO_UDP, 2),
        &udp_datagram(16),
    ]);
    let v6 = ipv6(IPV6_HOP_BY_HOP, &v6_payload);
    vec![
        ethernet(EtherTypes::Ipv4, &v4),
        ethernet(EtherTypes::PBridge, &vlan(1, EtherTypes::Vlan, &vlan(2, EtherTypes::Ipv6, &v6))),
        linux_sll(0x86dd, &v6),
        linux_sll2(0x0800, &v4),
        bsd_loopback(30u32.to_le_bytes(), &v6),
        v4,
        v6,
    ]
}

#[test]
fn no_panic_on_every_prefix_of_valid_frames() {
    for frame in sample_frames() {
        for cut in 0..=frame.len() {
            let captured = &frame[..cut];
            parse_everywhere(captured, frame.len() as u32);
            parse_everywhere(captured, cut as u32);
            parse_everywhere(captured, 0);
            parse_everywhere(captured, u32::MAX);
        }
    }
}

#[test]
fn no_panic_on_random_and_mutated_bytes() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let len = rng.below(128);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        parse_everywhere(&bytes, rng.next() as u32);
    }

    // Valid frames with a few bytes flipped reach deeper into the parsers than pure noise.
    let frames = sample_frames();
    for _ in 0..20_000 {
        let mut frame = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let position = rng.below(frame.len());
            frame[position] = rng.next() as u8;
        }
        let cut = rng.below(frame.len() + 1);
        parse_everywhere(&frame[..cut], frame.len() as u32);
    }
}
