//! Per-packet pre-processing of the Combo Packet method: which packets are kept, and the bytes
//! the model sees for each kept packet.
//!
//! The output of [`encode`] is raw bytes (not yet scaled): contexts travel through the rings as
//! bytes, four times smaller than floats, and are scaled to [-1, 1] only when a batch is built.
//!
//! Output layout for one packet (`packet_bytes` long, zero-padded):
//!
//! ```text
//! | IP header (+ IPv6 extension headers) | TCP header  | payload ...          | 0 0 0 ...
//! | IP header (+ IPv6 extension headers) | UDP 8 | 0*12 | payload ...         | 0 0 0 ...
//! ```

use std::ops::Range;

use crate::config::PreprocessConfig;
use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_SYN, Transport};

/// Why a parsed packet is not used: it carries nothing about the encrypted application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    Dns,
    Ntp,
    Netbios,
    EmptyTcp,
}

impl Filter {
    pub const ALL: [Filter; 4] = [Filter::Dns, Filter::Ntp, Filter::Netbios, Filter::EmptyTcp];

    pub fn name(self) -> &'static str {
        match self {
            Filter::Dns => "dns",
            Filter::Ntp => "ntp",
            Filter::Netbios => "netbios",
            Filter::EmptyTcp => "empty_tcp",
        }
    }
}

const DNS_PORTS: [u16; 3] = [53, 5353, 5355];
const NTP_PORT: u16 = 123;
const NETBIOS_PORTS: Range<u16> = 137..140;
/// Zero bytes appended to the 8-byte UDP header so it is as long as a bare TCP header.
const UDP_PADDING: usize = 12;

/// Decides whether a packet is dropped before it reaches the flow table.
pub fn filter(packet: &Packet<'_>, config: &PreprocessConfig) -> Option<Filter> {
    let (src_port, dst_port) = packet.ports();
    let either = |test: &dyn Fn(u16) -> bool| test(src_port) || test(dst_port);
    if config.skip_dns && either(&|port| DNS_PORTS.contains(&port)) {
        return Some(Filter::Dns);
    }
    if config.skip_ntp
        && matches!(packet.transport, Transport::Udp { .. })
        && either(&|port| port == NTP_PORT)
    {
        return Some(Filter::Ntp);
    }
    if config.skip_netbios && either(&|port| NETBIOS_PORTS.contains(&port)) {
        return Some(Filter::Netbios);
    }
    if let Transport::Tcp { flags, .. } = packet.transport {
        let control = flags & (TCP_SYN | TCP_ACK | TCP_FIN) != 0;
        if config.skip_empty_tcp && control && packet.payload_len == 0 {
            return Some(Filter::EmptyTcp);
        }
    }
    None
}

/// Writes the model bytes of one kept packet into `out` (its length is the packet size kept,
/// normally `config.packet_bytes`). Bytes not captured are zero, like the padding.
pub fn encode(packet: &Packet<'_>, config: &PreprocessConfig, out: &mut [u8]) {
    let ip = packet.ip;
    let transport_start = packet.transport_offset.min(ip.len());
    let payload_start = (packet.transport_offset + packet.transport_header_len()).min(ip.len());
    let is_udp = matches!(packet.transport, Transport::Udp { .. });

    // Copy headers, the UDP padding, then the payload, each cut at the output's end.
    let mut written = copy_into(out, 0, &ip[..payload_start]);
    if is_udp && config.pad_udp_header {
        let padding_end = (written + UDP_PADDING).min(out.len());
        out[written..padding_end].fill(0);
        written = padding_end;
    }
    written = copy_into(out, written, &ip[payload_start..]);
    out[written..].fill(0);

    // Anonymise and mask, at offsets the header copy left unchanged.
    let l4 = transport_start;
    let v4 = packet.ip_version == 4;
    if config.zero_ip_addresses {
        zero(out, if v4 { 12..20 } else { 8..40 });
    }
    if config.zero_tcp_seq_ack && !is_udp {
        zero(out, l4 + 4..l4 + 12);
    }
    if config.mask_ip_id {
        if v4 {
            zero(out, 4..6);
        } else {
            // The flow label is the low 20 bits of the first word.
            if let Some(byte) = out.get_mut(1) {
                *byte &= 0xf0;
            }
            zero(out, 2..4);
        }
    }
    if config.mask_ttl {
        zero(out, if v4 { 8..9 } else { 7..8 });
    }
    if config.mask_checksums {
        if v4 {
            zero(out, 10..12);
        }
        zero(out, if is_udp { l4 + 6..l4 + 8 } else { l4 + 16..l4 + 18 });
    }
    if config.mask_ports {
        zero(out, l4..l4 + 4);
    }
}

/// Copies as much of `bytes` as fits at `at`; returns the new end.
fn copy_into(out: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    let at = at.min(out.len());
    let n = bytes.len().min(out.len() - at);
    out[at..at + n].copy_from_slice(&bytes[..n]);
    at + n
}

/// Zeroes the part of `range` that lies inside `out`.
fn zero(out: &mut [u8], range: Range<usize>) {
    let end = range.end.min(out.len());
    if range.start < end {
        out[range.start..end].fill(0);
    }
}
