//! TCP and UDP headers, and the assembly of the final [`Packet`].

use std::net::IpAddr;

use nom::Parser;
use nom::number::complete::{be_u8, be_u16, be_u32};

use super::{HeaderResult, PROTO_TCP, PROTO_UDP, Packet, Skip, Transport, truncated};

const TCP_MIN_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

/// What the IP layer found, checked against the header lengths and the captured bytes.
pub(super) struct IpLayer {
    pub(super) version: u8,
    /// Length of the IP packet from its header (or the wire length when the header says 0).
    pub(super) ip_len: usize,
    /// IP header plus IPv6 extension headers; at most `ip_len` and the captured length.
    pub(super) transport_offset: usize,
    pub(super) protocol: u8,
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
}

/// The fixed part of a TCP header that we act on.
struct TcpFixedHeader {
    src_port: u16,
    dst_port: u16,
    header_len: usize,
    flags: u8,
}

fn tcp_fixed_header(input: &[u8]) -> HeaderResult<'_, TcpFixedHeader> {
    let (input, (src_port, dst_port, _seq, _ack, offset_byte, flags)) =
        (be_u16, be_u16, be_u32, be_u32, be_u8, be_u8).parse(input)?;
    let header =
        TcpFixedHeader { src_port, dst_port, header_len: usize::from(offset_byte >> 4) * 4, flags };
    Ok((input, header))
}

/// UDP source and destination port. The UDP length field is not used: the IP length is the
/// authority, and jumbograms carry 0 there.
fn udp_ports(input: &[u8]) -> HeaderResult<'_, (u16, u16)> {
    let (input, (src_port, dst_port, _length, _checksum)) =
        (be_u16, be_u16, be_u16, be_u16).parse(input)?;
    Ok((input, (src_port, dst_port)))
}

/// Parse the TCP or UDP header after the IP headers of `l3` and build the [`Packet`].
pub(super) fn parse_transport(l3: &[u8], ip: IpLayer) -> Result<Packet<'_>, Skip> {
    if ip.protocol != PROTO_TCP && ip.protocol != PROTO_UDP {
        return Err(Skip::OtherTransport);
    }

    // Cut Ethernet padding and trailers off at the IP length; a shorter capture stays as is.
    let ip_bytes = l3.get(..ip.ip_len).unwrap_or(l3);
    let snapped = ip_bytes.len() < ip.ip_len;
    let ip_payload_len = ip.ip_len.checked_sub(ip.transport_offset).ok_or(Skip::BadHeader)?;
    let segment = ip_bytes.get(ip.transport_offset..).ok_or(Skip::Truncated)?;

    let transport = if ip.protocol == PROTO_TCP {
        tcp(segment, ip_payload_len)?
    } else {
        udp(segment, ip_payload_len)?
    };
    let transport_header_len = match transport {
        Transport::Tcp { header_len, .. } => header_len,
        Transport::Udp { .. } => UDP_HEADER_LEN,
    };

    Ok(Packet {
        ip: ip_bytes,
        ip_version: ip.version,
        transport_offset: ip.transport_offset,
        protocol: ip.protocol,
        src: ip.src,
        dst: ip.dst,
        transport,
        // The header checks below guarantee the transport header fits in the IP payload.
        payload_len: ip_payload_len.saturating_sub(transport_header_len),
        snapped,
    })
}

/// `segment` is the captured part of the IP payload; `ip_payload_len` its length by header.
fn tcp(segment: &[u8], ip_payload_len: usize) -> Result<Transport, Skip> {
    if ip_payload_len < TCP_MIN_HEADER_LEN {
        return Err(Skip::BadHeader);
    }
    let (_, header) = tcp_fixed_header(segment).map_err(truncated)?;
    if header.header_len < TCP_MIN_HEADER_LEN || header.header_len > ip_payload_len {
        return Err(Skip::BadHeader);
    }
    // The options are part of the header and must be captured too.
    if segment.len() < header.header_len {
        return Err(Skip::Truncated);
    }
    Ok(Transport::Tcp {
        src_port: header.src_port,
        dst_port: header.dst_port,
        flags: header.flags,
        header_len: header.header_len,
    })
}

fn udp(segment: &[u8], ip_payload_len: usize) -> Result<Transport, Skip> {
    if ip_payload_len < UDP_HEADER_LEN {
        return Err(Skip::BadHeader);
    }
    let (_, (src_port, dst_port)) = udp_ports(segment).map_err(truncated)?;
    Ok(Transport::Udp { src_port, dst_port })
}
