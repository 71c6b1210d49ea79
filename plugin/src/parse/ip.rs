//! IPv4 and IPv6 headers, including IPv4 options and IPv6 extension headers.
//!
//! Every check that can be made from header fields alone comes before the check that the
//! captured bytes hold the header, so an impossible header is [`Skip::BadHeader`] even when
//! the capture also ends early.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nom::Parser;
use nom::number::complete::{be_u8, be_u16, be_u32, be_u128};

use super::link::IpVersionHint;
use super::transport::{IpLayer, parse_transport};
use super::{HeaderResult, Packet, Skip, truncated};

const IPV4_MIN_HEADER_LEN: usize = 20;
/// IPv4 "more fragments" flag in the flags/fragment-offset word.
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1FFF;

const IPV6_HEADER_LEN: usize = 40;
/// Packets with more extension headers than this are reported as bad headers; real traffic
/// carries at most a few, and the bound keeps the walk short on hostile input.
const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTHENTICATION: u8 = 51;
const IPV6_DESTINATION_OPTIONS: u8 = 60;

/// Bytes needed to read an extension header's next-header and length fields.
const IPV6_EXTENSION_PREFIX_LEN: usize = 2;
/// The fragment header has a fixed size and no length field.
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// The 13-bit fragment offset in the fragment header's offset/flags word.
const IPV6_FRAGMENT_OFFSET_MASK: u16 = 0xFFF8;
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;

/// Parse the IP packet at the start of `l3`, then its TCP or UDP header.
///
/// `wire_len` is how long the IP packet was on the wire as pcap's `orig_len` implies, never
/// less than `l3.len()`. It is used only when the IP header's own length field is 0
/// (segmentation offload captures), never to index or allocate.
pub(super) fn parse_ip(
    hint: IpVersionHint,
    l3: &[u8],
    wire_len: usize,
) -> Result<Packet<'_>, Skip> {
    let first_byte = *l3.first().ok_or(Skip::Truncated)?;
    let version = first_byte >> 4;
    match (hint, version) {
        (IpVersionHint::V4 | IpVersionHint::FromVersionNibble, 4) => parse_ipv4(l3, wire_len),
        (IpVersionHint::V6 | IpVersionHint::FromVersionNibble, 6) => parse_ipv6(l3, wire_len),
        _ => Err(Skip::BadHeader),
    }
}

/// The fields of the fixed 20-byte IPv4 header that we act on.
struct Ipv4FixedHeader {
    header_len: usize,
    total_len: u16,
    flags_and_offset: u16,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

fn ipv4_fixed_header(input: &[u8]) -> HeaderResult<'_, Ipv4FixedHeader> {
    let (input, (version_ihl, _tos, total_len, _id, flags_and_offset, _ttl, protocol)) =
        (be_u8, be_u8, be_u16, be_u16, be_u16, be_u8, be_u8).parse(input)?;
    let (input, (_checksum, src, dst)) = (be_u16, be_u32, be_u32).parse(input)?;
    let header = Ipv4FixedHeader {
        header_len: usize::from(version_ihl & 0x0F) * 4,
        total_len,
        flags_and_offset,
        protocol,
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
    };
    Ok((input, header))
}

fn parse_ipv4(l3: &[u8], wire_len: usize) -> Result<Packet<'_>, Skip> {
    let (_, header) = ipv4_fixed_header(l3).map_err(truncated)?;

    // Lengths from the header: IHL first, then the total length it must cover. A total length
    // of 0 is what segmentation offload (TSO, BIG TCP) leaves in captured packets; the real
    // length is then only known from the wire length.
    if header.header_len < IPV4_MIN_HEADER_LEN {
        return Err(Skip::BadHeader);
    }
    let ip_len = match header.total_len {
        0 => wire_len,
        declared => usize::from(declared),
    };
    if ip_len < header.header_len {
        return Err(Skip::BadHeader);
    }
    if l3.len() < header.header_len {
        return Err(Skip::Truncated);
    }

    // Fragments are not reassembled; a later fragment has no transport header at all.
    let fragment_bits = IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK;
    if header.flags_and_offset & fragment_bits != 0 {
        return Err(Skip::Fragment);
    }

    parse_transport(
        l3,
        IpLayer {
            version: 4,
            ip_len,
            transport_offset: header.header_len,
            protocol: header.protocol,
            src: IpAddr::V4(header.src),
            dst: IpAddr::V4(header.dst),
        },
    )
}

/// The fields of the fixed 40-byte IPv6 header that we act on.
struct Ipv6FixedHeader {
    payload_len: u16,
    next_header: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
}

fn ipv6_fixed_header(input: &[u8]) -> HeaderResult<'_, Ipv6FixedHeader> {
    let (input, (_version_class_flow, payload_len, next_header, _hop_limit, src, dst)) =
        (be_u32, be_u16, be_u8, be_u8, be_u128, be_u128).parse(input)?;
    let header = Ipv6FixedHeader {
        payload_len,
        next_header,
        src: Ipv6Addr::from(src),
        dst: Ipv6Addr::from(dst),
    };
    Ok((input, header))
}

fn parse_ipv6(l3: &[u8], wire_len: usize) -> Result<Packet<'_>, Skip> {
    let (_, header) = ipv6_fixed_header(l3).map_err(truncated)?;

    // A payload length of 0 means a jumbogram or an offloaded (BIG TCP) packet whose real
    // length is only known from the wire length.
    let ip_len = match header.payload_len {
        0 => wire_len,
        declared => IPV6_HEADER_LEN + usize::from(declared),
    };

    // Walk the extension headers to the transport header.
    let mut protocol = header.next_header;
    let mut offset = IPV6_HEADER_LEN;
    let mut headers_seen = 0;
    while is_extension_header(protocol) {
        if headers_seen == MAX_IPV6_EXTENSION_HEADERS {
            return Err(Skip::BadHeader);
        }
        headers_seen += 1;
        let (next_protocol, header_len) = extension_header(protocol, l3, offset, ip_len)?;
        protocol = next_protocol;
        offset += header_len;
    }

    parse_transport(
        l3,
        IpLayer {
            version: 6,
            ip_len,
            transport_offset: offset,
            protocol,
            src: IpAddr::V6(header.src),
            dst: IpAddr::V6(header.dst),
        },
    )
}

/// Extension headers we step over. ESP (50) is not one: what follows it is encrypted.
fn is_extension_header(protocol: u8) -> bool {
    matches!(
        protocol,
        IPV6_HOP_BY_HOP
            | IPV6_ROUTING
            | IPV6_FRAGMENT
            | IPV6_AUTHENTICATION
            | IPV6_DESTINATION_OPTIONS
    )
}

/// Read the extension header of type `kind` at `offset` in `l3`. Returns the protocol that
/// follows it and its length. The header must lie inside the IP packet (`ip_len`, else a bad
/// header) and inside the captured bytes (else truncated).
///
/// A fragment header is [`Skip::Fragment`] unless it is an atomic fragment (offset 0, no
/// more fragments), which holds the whole packet and is parsed through (RFC 6946).
fn extension_header(
    kind: u8,
    l3: &[u8],
    offset: usize,
    ip_len: usize,
) -> Result<(u8, usize), Skip> {
    // The fixed part (the length field, or the whole fragment header) inside both lengths.
    let fixed_part_len = match kind {
        IPV6_FRAGMENT => IPV6_FRAGMENT_HEADER_LEN,
        _ => IPV6_EXTENSION_PREFIX_LEN,
    };
    if offset + fixed_part_len > ip_len {
        return Err(Skip::BadHeader);
    }
    let at_header = l3.get(offset..).ok_or(Skip::Truncated)?;

    // Next protocol and length; a fragment header ends the walk unless it is atomic.
    let (next_protocol, header_len) = match kind {
        IPV6_FRAGMENT => {
            let (_, (next_protocol, _reserved, offset_and_flags, _id)) =
                fragment_header(at_header).map_err(truncated)?;
            let fragment_bits = IPV6_FRAGMENT_OFFSET_MASK | IPV6_MORE_FRAGMENTS;
            if offset_and_flags & fragment_bits != 0 {
                return Err(Skip::Fragment);
            }
            (next_protocol, IPV6_FRAGMENT_HEADER_LEN)
        }
        // RFC 4302: AH length is in 4-byte units, not counting the first two.
        IPV6_AUTHENTICATION => {
            let (_, (next_protocol, length_field)) = extension_prefix(at_header)?;
            (next_protocol, (usize::from(length_field) + 2) * 4)
        }
        // RFC 8200: in 8-byte units, not counting the first 8 bytes.
        _ => {
            let (_, (next_protocol, length_field)) = extension_prefix(at_header)?;
            (next_protocol, (usize::from(length_field) + 1) * 8)
        }
    };

    // The whole header inside both lengths.
    if offset + header_len > ip_len {
        return Err(Skip::BadHeader);
    }
    if offset + header_len > l3.len() {
        return Err(Skip::Truncated);
    }
    Ok((next_protocol, header_len))
}

/// Next-header and length fields that open every extension header but the fragment header.
fn extension_prefix(input: &[u8]) -> Result<(&[u8], (u8, u8)), Skip> {
    (be_u8, be_u8).parse(input).map_err(truncated)
}

/// The IPv6 fragment header: next header, reserved, offset/flags, identification.
fn fragment_header(input: &[u8]) -> HeaderResult<'_, (u8, u8, u16, u32)> {
    (be_u8, be_u8, be_u16, be_u32).parse(input)
}
