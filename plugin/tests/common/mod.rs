//! Frame builders shared by the pre-processing and engine tests. Frames are built with pnet's
//! mutable packet views; checksums are left as the builders set them (the engine never checks
//! them).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet::packet::MutablePacket;
use pnet::packet::ethernet::{EtherType, EtherTypes, MutableEthernetPacket};
use pnet::packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet::packet::ipv4::{Ipv4Flags, MutableIpv4Packet};
use pnet::packet::ipv6::MutableIpv6Packet;
use pnet::packet::tcp::{MutableTcpPacket, TcpFlags};
use pnet::packet::udp::MutableUdpPacket;
use pnet::util::MacAddr;

pub const ETHERNET_HEADER_LEN: usize = 14;
/// Shortest Ethernet frame without FCS; NICs pad shorter frames up to it.
pub const ETHERNET_MIN_FRAME_LEN: usize = 60;
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;

/// PSH+ACK: an ordinary data segment.
pub const DATA: u8 = TcpFlags::PSH | TcpFlags::ACK;
pub const ACK: u8 = TcpFlags::ACK;
pub const SYN: u8 = TcpFlags::SYN;
pub const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
pub const FIN_ACK: u8 = TcpFlags::FIN | TcpFlags::ACK;
pub const RST: u8 = TcpFlags::RST;
pub const FIN: u8 = TcpFlags::FIN;

/// An Ethernet II frame around `l3`, padded with zeros to the 60-byte minimum like a NIC.
pub fn ethernet(ethertype: EtherType, l3: &[u8]) -> Vec<u8> {
    let len = (ETHERNET_HEADER_LEN + l3.len()).max(ETHERNET_MIN_FRAME_LEN);
    let mut bytes = vec![0u8; len];
    let mut frame = MutableEthernetPacket::new(&mut bytes).expect("buffer holds Ethernet");
    frame.set_destination(MacAddr::new(0x02, 0, 0, 0, 0, 0x01));
    frame.set_source(MacAddr::new(0x02, 0, 0, 0, 0, 0x02));
    frame.set_ethertype(ethertype);
    frame.packet_mut()[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + l3.len()].copy_from_slice(l3);
    bytes
}

/// A TCP segment (20-byte header, no options) with fixed non-zero sequence numbers.
pub fn tcp_segment(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; TCP_HEADER_LEN + payload.len()];
    let mut tcp = MutableTcpPacket::new(&mut bytes).expect("buffer holds a TCP header");
    tcp.set_source(src_port);
    tcp.set_destination(dst_port);
    tcp.set_sequence(0x1122_3344);
    tcp.set_acknowledgement(0x5566_7788);
    tcp.set_data_offset((TCP_HEADER_LEN / 4) as u8);
    tcp.set_flags(flags);
    tcp.set_window(0xffff);
    tcp.set_payload(payload);
    bytes
}

pub fn udp_datagram(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; UDP_HEADER_LEN + payload.len()];
    let mut udp = MutableUdpPacket::new(&mut bytes).expect("buffer holds a UDP header");
    udp.set_source(src_port);
    udp.set_destination(dst_port);
    udp.set_length((UDP_HEADER_LEN + payload.len()) as u16);
    udp.set_payload(payload);
    bytes
}

/// An IPv4 packet (no options) around `transport`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpNextHeaderProtocol,
    transport: &[u8],
) -> Vec<u8> {
    let mut bytes = vec![0u8; IPV4_HEADER_LEN + transport.len()];
    let mut ip = MutableIpv4Packet::new(&mut bytes).expect("buffer holds an IPv4 header");
    ip.set_version(4);
    ip.set_header_length((IPV4_HEADER_LEN / 4) as u8);
    ip.set_total_length((IPV4_HEADER_LEN + transport.len()) as u16);
    ip.set_identification(0x1c46);
    ip.set_flags(Ipv4Flags::DontFragment);
    ip.set_ttl(64);
    ip.set_next_level_protocol(protocol);
    ip.set_source(src);
    ip.set_destination(dst);
    ip.set_payload(transport);
    bytes
}

pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: IpNextHeaderProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut bytes = vec![0u8; IPV6_HEADER_LEN + payload.len()];
    let mut ip = MutableIpv6Packet::new(&mut bytes).expect("buffer holds an IPv6 header");
    ip.set_version(6);
    ip.set_payload_length(payload.len() as u16);
    ip.set_next_header(next_header);
    ip.set_hop_limit(64);
    ip.set_source(src);
    ip.set_destination(dst);
    ip.set_payload(payload);
    bytes
}

/// An Ethernet frame carrying IPv4 and TCP.
pub fn tcp4(
    (src, src_port): (Ipv4Addr, u16),
    (dst, dst_port): (Ipv4Addr, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let segment = tcp_segment(src_port, dst_port, flags, payload);
    let packet = ipv4(src, dst, IpNextHeaderProtocols::Tcp, &segment);
    ethernet(EtherTypes::Ipv4, &packet)
}

/// An Ethernet frame carrying IPv4 and UDP.
pub fn udp4(
    (src, src_port): (Ipv4Addr, u16),
    (dst, dst_port): (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let datagram = udp_datagram(src_port, dst_port, payload);
    let packet = ipv4(src, dst, IpNextHeaderProtocols::Udp, &datagram);
    ethernet(EtherTypes::Ipv4, &packet)
}

/// An Ethernet frame carrying IPv6 and TCP.
pub fn tcp6(
    (src, src_port): (Ipv6Addr, u16),
    (dst, dst_port): (Ipv6Addr, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let segment = tcp_segment(src_port, dst_port, flags, payload);
    let packet = ipv6(src, dst, IpNextHeaderProtocols::Tcp, &segment);
    ethernet(EtherTypes::Ipv6, &packet)
}

/// An ARP request frame (not IP).
pub fn arp_frame() -> Vec<u8> {
    let mut arp = vec![
        0x00, 0x01, // hardware type: Ethernet
        0x08, 0x00, // protocol type: IPv4
        6, 4, // address lengths
        0x00, 0x01, // operation: request
    ];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 192, 0, 2, 1]); // sender MAC and IP
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 2]); // target MAC and IP
    ethernet(EtherTypes::Arp, &arp)
}

/// The first fragment of an IPv4 TCP packet (more-fragments flag set).
pub fn fragment_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let segment = tcp_segment(src.1, dst.1, DATA, &[0x42; 32]);
    let mut packet = ipv4(src.0, dst.0, IpNextHeaderProtocols::Tcp, &segment);
    let mut ip = MutableIpv4Packet::new(&mut packet).expect("buffer holds an IPv4 header");
    ip.set_flags(Ipv4Flags::MoreFragments);
    ethernet(EtherTypes::Ipv4, &packet)
}

/// An ICMP echo request in IPv4 (no ports: never a flow).
pub fn icmp_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 1];
    let packet = ipv4(src, dst, IpNextHeaderProtocols::Icmp, &echo);
    ethernet(EtherTypes::Ipv4, &packet)
}
