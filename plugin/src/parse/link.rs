//! Link-layer headers: where the IP packet starts, and which IP version the link announces.
//!
//! Each parser reads a fixed-size header with nom; a nom failure can only mean that the frame
//! ended early, so it becomes [`Skip::Truncated`].

use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32};

use super::{HeaderResult, LinkType, Skip, truncated};

/// Which IP version the link layer announced for the bytes after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersionHint {
    /// The link said IPv4 (ethertype 0x0800, AF_INET, LINKTYPE_IPV4).
    V4,
    /// The link said IPv6 (ethertype 0x86DD, a BSD AF_INET6, LINKTYPE_IPV6).
    V6,
    /// Raw IP without a link header: the version nibble of the first byte decides.
    FromVersionNibble,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
/// IEEE 802.1Q customer VLAN tag.
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802.1ad service tag (QinQ).
const ETHERTYPE_QINQ: u16 = 0x88A8;
/// Pre-standard QinQ service tag some switches still emit.
const ETHERTYPE_QINQ_LEGACY: u16 = 0x9100;

/// QinQ stacks two tags; provider backbones may add one or two more. A deeper stack is not
/// traffic we expect and is reported as a bad header rather than followed further.
const MAX_VLAN_TAGS: usize = 4;

/// Destination and source MAC addresses in front of the Ethernet ethertype.
const ETHERNET_ADDRESSES_LEN: usize = 12;
/// Linux cooked v1: packet type, ARPHRD type and address length (2 bytes each) plus an
/// 8-byte address field, in front of the protocol field at bytes 14..16.
const SLL_BEFORE_PROTOCOL_LEN: usize = 14;
/// Linux cooked v2 after its protocol and reserved fields: interface index (4), ARPHRD
/// type (2), packet type (1), address length (1), address field (8).
const SLL2_AFTER_RESERVED_LEN: usize = 16;

/// BSD address families in the NULL/LOOP header. AF_INET is 2 everywhere; AF_INET6 differs
/// per system: 24 on NetBSD/OpenBSD, 28 on FreeBSD/DragonFly, 30 on Darwin.
const BSD_AF_INET: u32 = 2;
const BSD_AF_INET6_NETBSD: u32 = 24;
const BSD_AF_INET6_FREEBSD: u32 = 28;
const BSD_AF_INET6_DARWIN: u32 = 30;

/// Byte order of the BSD loopback family field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamilyByteOrder {
    /// LINKTYPE_NULL: the capturing host's order, which the file does not record.
    Detect,
    /// LINKTYPE_LOOP: always network order.
    Big,
}

/// Strip the link-layer header of `frame` (and any VLAN tags). Returns the IP version the link
/// announced and the bytes that follow, which begin with the IP header.
pub fn strip_link_layer(link: LinkType, frame: &[u8]) -> Result<(IpVersionHint, &[u8]), Skip> {
    match link {
        LinkType::ETHERNET => {
            let (rest, ethertype) = ethernet_header(frame).map_err(truncated)?;
            follow_ethertype(ethertype, rest)
        }
        LinkType::RAW | LinkType::RAW_BSD | LinkType::RAW_OPENBSD => {
            Ok((IpVersionHint::FromVersionNibble, frame))
        }
        LinkType::IPV4 => Ok((IpVersionHint::V4, frame)),
        LinkType::IPV6 => Ok((IpVersionHint::V6, frame)),
        LinkType::LINUX_SLL => {
            let (rest, protocol) = linux_sll_header(frame).map_err(truncated)?;
            follow_ethertype(protocol, rest)
        }
        LinkType::LINUX_SLL2 => {
            let (rest, protocol) = linux_sll2_header(frame).map_err(truncated)?;
            follow_ethertype(protocol, rest)
        }
        LinkType::NULL => bsd_loopback(frame, FamilyByteOrder::Detect),
        LinkType::LOOP => bsd_loopback(frame, FamilyByteOrder::Big),
        _ => Err(Skip::UnsupportedLink),
    }
}

/// Ethernet II: two MAC addresses, then the ethertype.
fn ethernet_header(input: &[u8]) -> HeaderResult<'_, u16> {
    let (input, _addresses) = take(ETHERNET_ADDRESSES_LEN)(input)?;
    be_u16(input)
}

/// Linux cooked capture v1: the protocol (an ethertype for IP) sits at bytes 14..16.
fn linux_sll_header(input: &[u8]) -> HeaderResult<'_, u16> {
    let (input, _before_protocol) = take(SLL_BEFORE_PROTOCOL_LEN)(input)?;
    be_u16(input)
}

/// Linux cooked capture v2: the protocol comes first, the rest of the 20 bytes after it.
fn linux_sll2_header(input: &[u8]) -> HeaderResult<'_, u16> {
    let (input, (protocol, _reserved, _rest_of_header)) =
        (be_u16, be_u16, take(SLL2_AFTER_RESERVED_LEN)).parse(input)?;
    Ok((input, protocol))
}

/// One 802.1Q/802.1ad tag: tag control information, then the inner ethertype.
fn vlan_tag(input: &[u8]) -> HeaderResult<'_, u16> {
    let (input, (_tag_control, inner_ethertype)) = (be_u16, be_u16).parse(input)?;
    Ok((input, inner_ethertype))
}

/// Follow an ethertype through at most [`MAX_VLAN_TAGS`] stacked tags to IPv4 or IPv6.
fn follow_ethertype(ethertype: u16, rest: &[u8]) -> Result<(IpVersionHint, &[u8]), Skip> {
    let mut ethertype = ethertype;
    let mut rest = rest;
    let mut tags_seen = 0;
    loop {
        match ethertype {
            ETHERTYPE_IPV4 => return Ok((IpVersionHint::V4, rest)),
            ETHERTYPE_IPV6 => return Ok((IpVersionHint::V6, rest)),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_LEGACY => {
                if tags_seen == MAX_VLAN_TAGS {
                    return Err(Skip::BadHeader);
                }
                tags_seen += 1;
                (rest, ethertype) = vlan_tag(rest).map_err(truncated)?;
            }
            // ARP, LLDP, MPLS, PPPoE, 802.3 length fields (< 0x0600), ...
            _ => return Err(Skip::NonIp),
        }
    }
}

/// BSD NULL/LOOP: a 4-byte address family, then the IP packet.
fn bsd_loopback(frame: &[u8], order: FamilyByteOrder) -> Result<(IpVersionHint, &[u8]), Skip> {
    let (rest, big_endian) = be_u32(frame).map_err(truncated)?;
    let family = match order {
        FamilyByteOrder::Big => big_endian,
        // Families are small numbers, so in the capturing host's order either the two high
        // bytes (big-endian) or the two low bytes (little-endian) of the field are zero.
        FamilyByteOrder::Detect if big_endian & 0xFFFF_0000 == 0 => big_endian,
        FamilyByteOrder::Detect => big_endian.swap_bytes(),
    };
    match family {
        BSD_AF_INET => Ok((IpVersionHint::V4, rest)),
        BSD_AF_INET6_NETBSD | BSD_AF_INET6_FREEBSD | BSD_AF_INET6_DARWIN => {
            Ok((IpVersionHint::V6, rest))
        }
        _ => Err(Skip::NonIp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_family_detects_both_byte_orders() {
        let little = [2, 0, 0, 0, 0x45];
        let big = [0, 0, 0, 30, 0x60];
        assert_eq!(strip_link_layer(LinkType::NULL, &little), Ok((IpVersionHint::V4, &[0x45][..])));
        assert_eq!(strip_link_layer(LinkType::NULL, &big), Ok((IpVersionHint::V6, &[0x60][..])));
    }

    #[test]
    fn loop_family_is_always_big_endian() {
        let little = [2, 0, 0, 0, 0x45];
        assert_eq!(strip_link_layer(LinkType::LOOP, &little), Err(Skip::NonIp));
    }

    #[test]
    fn too_many_vlan_tags_is_a_bad_header() {
        let mut frame = vec![0u8; ETHERNET_ADDRESSES_LEN];
        for _ in 0..=MAX_VLAN_TAGS {
            frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            frame.extend_from_slice(&[0, 1]);
        }
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(strip_link_layer(LinkType::ETHERNET, &frame), Err(Skip::BadHeader));
    }
}
