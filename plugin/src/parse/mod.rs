//! Zero-copy packet parsing: link layer, IPv4/IPv6, TCP/UDP.
//!
//! Every length comes from the headers, never from how many bytes were captured: Ethernet
//! padding and trailers are not payload, and a packet whose headers do not fit in the captured
//! bytes is reported as truncated. No function here allocates or panics; every anomaly is a
//! [`Skip`] the caller counts.

use std::net::IpAddr;

/// A pcap/pcapng link-layer type (LINKTYPE_* in the tcpdump registry). Kept open: unknown
/// values stay representable and are skipped as [`Skip::UnsupportedLink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkType(pub u32);

impl LinkType {
    /// BSD loopback: 4-byte address family in the host byte order of the capturing machine.
    pub const NULL: LinkType = LinkType(0);
    pub const ETHERNET: LinkType = LinkType(1);
    /// LINKTYPE_RAW as some BSDs number it (DLT_RAW = 12).
    pub const RAW_BSD: LinkType = LinkType(12);
    /// LINKTYPE_RAW as OpenBSD numbers it (DLT_RAW = 14).
    pub const RAW_OPENBSD: LinkType = LinkType(14);
    pub const RAW: LinkType = LinkType(101);
    /// OpenBSD loopback: like NULL but the family is always big-endian.
    pub const LOOP: LinkType = LinkType(108);
    pub const LINUX_SLL: LinkType = LinkType(113);
    pub const IPV4: LinkType = LinkType(228);
    pub const IPV6: LinkType = LinkType(229);
    pub const LINUX_SLL2: LinkType = LinkType(276);
}

/// Why a packet does not reach the flow table. Each variant is a counter in the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The link type is not one we parse.
    UnsupportedLink,
    /// A valid frame that carries no IPv4/IPv6 (ARP, LLDP, ...).
    NonIp,
    /// The captured bytes end before the link, IP or transport header does.
    Truncated,
    /// A header field is impossible (IHL < 5, total length < header, TCP data offset < 5, ...).
    BadHeader,
    /// An IP fragment; fragments are not reassembled.
    Fragment,
    /// IP carrying neither TCP nor UDP (ICMP, GRE, ESP, ...).
    OtherTransport,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::UnsupportedLink,
        Skip::NonIp,
        Skip::Truncated,
        Skip::BadHeader,
        Skip::Fragment,
        Skip::OtherTransport,
    ];

    /// Stable snake_case name used in statistics output.
    pub fn name(self) -> &'static str {
        match self {
            Skip::UnsupportedLink => "unsupported_link",
            Skip::NonIp => "non_ip",
            Skip::Truncated => "truncated",
            Skip::BadHeader => "bad_header",
            Skip::Fragment => "fragment",
            Skip::OtherTransport => "other_transport",
        }
    }
}

/// IANA protocol numbers we act on.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The transport header as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `flags` is the TCP flags byte (byte 13: CWR ECE URG ACK PSH RST SYN FIN).
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        header_len: usize,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A parsed IP packet, borrowing the frame.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// From the first byte of the IP header to the end of the IP packet as the IP header's
    /// length says, cut at the captured bytes when the capture is shorter (snap length).
    pub ip: &'a [u8],
    /// 4 or 6.
    pub ip_version: u8,
    /// Bytes from the start of `ip` to the transport header: IPv4 IHL*4, or IPv6's 40 bytes
    /// plus every extension header.
    pub transport_offset: usize,
    /// Transport protocol number (after IPv6 extension headers).
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// Transport payload length from the headers (IP length minus IP and transport headers),
    /// independent of how much was captured.
    pub payload_len: usize,
    /// True when fewer bytes were captured than the IP header says the packet has.
    pub snapped: bool,
}

impl Packet<'_> {
    /// Length of the transport header: TCP data offset * 4, or 8 for UDP.
    pub fn transport_header_len(&self) -> usize {
        match self.transport {
            Transport::Tcp { header_len, .. } => header_len,
            Transport::Udp { .. } => 8,
        }
    }

    pub fn ports(&self) -> (u16, u16) {
        match self.transport {
            Transport::Tcp { src_port, dst_port, .. } => (src_port, dst_port),
            Transport::Udp { src_port, dst_port } => (src_port, dst_port),
        }
    }
}

mod ip;
mod link;
mod transport;

pub use link::{IpVersionHint, strip_link_layer};

/// nom result for the fixed-layout headers. The unit error only ever means "input too short":
/// the parsers read fixed-size fields and never reject a value themselves.
type HeaderResult<'a, T> = nom::IResult<&'a [u8], T, ()>;

/// A nom failure on a fixed-layout header: the captured bytes ended inside it.
fn truncated(_: nom::Err<()>) -> Skip {
    Skip::Truncated
}

/// Parse one captured frame. `orig_len` is the frame's length on the wire (pcap's `len`);
/// `frame` holds the captured bytes (pcap's `caplen` of them).
///
/// Lengths come from the IP header. `orig_len` is consulted only when the header leaves its
/// length 0 (IPv4 total length or IPv6 payload length, as segmentation offload captures and
/// jumbograms do): the IP length is then the wire length minus the link header, or the
/// captured length if `orig_len` claims less. It is never used to index or allocate.
pub fn parse(link: LinkType, frame: &[u8], orig_len: u32) -> Result<Packet<'_>, Skip> {
    let (version_hint, l3) = strip_link_layer(link, frame)?;
    let link_header_len = frame.len().saturating_sub(l3.len());
    let wire_len = usize::try_from(orig_len).unwrap_or(usize::MAX);
    let l3_wire_len = wire_len.saturating_sub(link_header_len).max(l3.len());
    ip::parse_ip(version_hint, l3, l3_wire_len)
}
