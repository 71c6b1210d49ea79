//! Capture files for replay: a streaming reader for pcap and pcapng.
//!
//! [`CaptureReader`] yields one [`Frame`] at a time from a classic pcap file (microsecond or
//! nanosecond timestamps, either byte order) or a pcapng file (several sections, several
//! interfaces each, Enhanced and Simple Packet Blocks, either byte order). The `pcap-parser`
//! crate decodes the record and block layouts; this module owns the buffering, the limits,
//! and the per-interface state (link type, snap length, timestamp resolution and offset)
//! that turns blocks into frames.
//!
//! Memory stays bounded: the reader keeps one buffer, which grows only to hold the largest
//! block met and never beyond [`MAX_BLOCK_SIZE`]. A block that claims more is an error,
//! found from its length field before anything is read, and a section may describe at most
//! [`MAX_INTERFACES_PER_SECTION`] interfaces.
//!
//! Every problem becomes a [`CaptureError`] naming the file and the byte offset of the
//! record at fault; no input makes the reader panic. After an error the reader stays failed
//! and returns the same error again, so a caller cannot spin on a bad record.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use pcap_parser::PcapError;
use pcap_parser::nom;
use pcap_parser::pcap::{
    LegacyPcapBlock, parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified,
    parse_pcap_header,
};
use pcap_parser::pcapng::{
    EPB_MAGIC, IDB_MAGIC, OptionCode, SHB_MAGIC, SPB_MAGIC, parse_enhancedpacketblock_be,
    parse_enhancedpacketblock_le, parse_interfacedescriptionblock_be,
    parse_interfacedescriptionblock_le, parse_sectionheaderblock, parse_simplepacketblock_be,
    parse_simplepacketblock_le,
};

/// The largest pcap record or pcapng block the reader accepts, headers included.
///
/// Real packets are far smaller (tools cap snap lengths at 256 KiB); the limit exists so
/// that a corrupt length field cannot make the reader allocate gigabytes.
pub const MAX_BLOCK_SIZE: usize = 16 * 1024 * 1024;

/// The most interfaces one pcapng section may describe.
///
/// Each costs a few bytes of state; the limit bounds that state for a file made of nothing
/// but interface descriptions.
pub const MAX_INTERFACES_PER_SECTION: usize = 65_536;

/// Buffer size at open: many typical packets per `read` call.
const INITIAL_BUFFER_SIZE: usize = 256 * 1024;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The pcap file header (magic, version, zone, sigfigs, snaplen, link type).
const PCAP_FILE_HEADER_LEN: usize = 24;
/// The pcap record header: seconds, fraction, captured and original length.
const PCAP_RECORD_HEADER_LEN: usize = 16;
/// Kuznetzov's "modified" pcap adds interface index, protocol, packet type and padding.
const PCAP_MODIFIED_RECORD_HEADER_LEN: usize = 24;

/// First bytes of the pcap flavours, as they appear in the file.
const PCAP_MICROS_LE: [u8; 4] = [0xd4, 0xc3, 0xb2, 0xa1];
const PCAP_MICROS_BE: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];
const PCAP_NANOS_LE: [u8; 4] = [0x4d, 0x3c, 0xb2, 0xa1];
const PCAP_NANOS_BE: [u8; 4] = [0xa1, 0xb2, 0x3c, 0x4d];
const PCAP_MODIFIED_LE: [u8; 4] = [0x34, 0xcd, 0xb2, 0xa1];
/// The pcapng Section Header Block type; a palindrome, so byte order does not matter.
const PCAPNG_SECTION_HEADER: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// Compressed files are a common mistake; they get a message that says so (gzip files
/// start with 1f 8b).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The pcapng byte-order magic 0x1A2B3C4D as written by each byte order.
const PCAPNG_BYTE_ORDER_LE: [u8; 4] = [0x4d, 0x3c, 0x2b, 0x1a];
const PCAPNG_BYTE_ORDER_BE: [u8; 4] = [0x1a, 0x2b, 0x3c, 0x4d];

/// Every pcapng block: type, length, then the length again at the end.
const PCAPNG_BLOCK_OVERHEAD: usize = 12;
/// Smallest valid block of each kind we decode, from the pcapng specification.
const PCAPNG_SECTION_HEADER_MIN_LEN: usize = 28;
const PCAPNG_INTERFACE_MIN_LEN: usize = 20;
const PCAPNG_ENHANCED_PACKET_MIN_LEN: usize = 32;
const PCAPNG_SIMPLE_PACKET_MIN_LEN: usize = 16;
/// Where packet bytes start inside the block: after type, length and the packet header.
const PCAPNG_ENHANCED_PACKET_DATA_OFFSET: usize = 28;
const PCAPNG_SIMPLE_PACKET_DATA_OFFSET: usize = 12;
/// The obsolete Packet Block (pcapng 1.0 drafts); no tool has written it for years.
const PCAPNG_OBSOLETE_PACKET_BLOCK: u32 = 2;
/// Without an `if_tsresol` option, pcapng timestamps count microseconds.
const PCAPNG_DEFAULT_TSRESOL: u8 = 6;

/// A problem with a capture file: which file, where in it, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// The file as given to [`CaptureReader::open`].
    pub path: PathBuf,
    /// Byte offset of the record or block at fault (0 for problems opening the file).
    pub offset: u64,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: at byte {}: {}", self.path.display(), self.offset, self.message)
    }
}

impl std::error::Error for CaptureError {}

/// One captured packet.
///
/// `data` borrows the reader's buffer, so a frame lives until the next call to
/// [`CaptureReader::next_frame`]; copy the bytes to keep them longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Link-layer type of `data`, from the tcpdump LINKTYPE registry (1 Ethernet, 101 raw
    /// IP, 113 Linux cooked...).
    pub link_type: u32,
    /// When the packet was captured, in nanoseconds since the Unix epoch (UTC). A Simple
    /// Packet Block carries no time, so its frame repeats the previous frame's time.
    pub ts_nanos: u64,
    /// The captured bytes, starting with the link-layer header.
    pub data: &'a [u8],
    /// The packet's length on the wire; larger than `data.len()` when the capture was
    /// cut at the snap length.
    pub orig_len: u32,
    /// Index of the capturing interface within its pcapng section (interfaces are numbered
    /// afresh in every section); always 0 for pcap.
    pub interface: u32,
}

/// Streaming reader over a pcap or pcapng file, one [`Frame`] at a time.
pub struct CaptureReader {
    path: PathBuf,
    input: InputBuffer,
    format: Format,
    total_bytes: u64,
    /// Set by the first error; every later call returns it again.
    failure: Option<CaptureError>,
}

impl fmt::Debug for CaptureReader {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CaptureReader")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("bytes_read", &self.bytes_read())
            .field("total_bytes", &self.total_bytes)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl CaptureReader {
    /// Opens a capture file and reads its header.
    ///
    /// The format comes from the first bytes, not the file name: the four pcap magics
    /// (microsecond or nanosecond, either byte order), the "modified" pcap variant, and
    /// pcapng, whose first Section Header Block is checked here.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or read, is empty, starts with anything else (the
    /// message then shows its first bytes), or has a damaged header.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let open_error =
            |message: String| CaptureError { path: path.to_path_buf(), offset: 0, message };
        let file = File::open(path).map_err(|error| open_error(format!("cannot open: {error}")))?;
        let total_bytes = file
            .metadata()
            .map_err(|error| open_error(format!("cannot read metadata: {error}")))?
            .len();
        Self::from_source(path, Box::new(file), total_bytes)
    }

    /// Reads the header from any byte source; `path` only labels errors.
    fn from_source(
        path: &Path,
        source: Box<dyn Read + Send>,
        total_bytes: u64,
    ) -> Result<Self, CaptureError> {
        let mut input = InputBuffer::new(source);
        let format = Format::detect(&mut input).map_err(|problem| problem.in_file(path))?;
        Ok(Self { path: path.to_path_buf(), input, format, total_bytes, failure: None })
    }

    /// Returns the next frame, or `None` at a clean end of file.
    ///
    /// Blocks that carry no packet (statistics, name resolution, custom blocks...) are
    /// skipped.
    ///
    /// # Errors
    ///
    /// When the file ends inside a record, a record is malformed or breaks a limit, or a
    /// read fails. The error names the record's offset; the reader then stays failed and
    /// returns the same error on every later call.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let located = match &mut self.format {
            Format::Pcap(pcap) => pcap.next_frame(&mut self.input),
            Format::PcapNg(pcapng) => pcapng.next_frame(&mut self.input),
        };
        let location = match located {
            Ok(Some(location)) => location,
            Ok(None) => return Ok(None),
            Err(problem) => return Err(self.fail(problem)),
        };

        // The range was handed out by the buffer a moment ago, so it is in bounds; should it
        // not be, that is a bug reported as an error rather than a panic.
        if self.input.consumed_bytes(location.data.clone()).is_none() {
            let offset = self.input.position();
            return Err(self.fail(Problem::new(offset, "internal error: frame out of buffer")));
        }
        let data = self.input.consumed_bytes(location.data).unwrap_or_default();
        Ok(Some(Frame {
            link_type: location.link_type,
            ts_nanos: location.ts_nanos,
            data,
            orig_len: location.orig_len,
            interface: location.interface,
        }))
    }

    /// Size of the file when it was opened.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes of the file consumed so far: the offset where the next record starts. Reaches
    /// [`total_bytes`](Self::total_bytes) at the end of a regular file.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.input.position()
    }

    /// Records the first error so every later call repeats it.
    fn fail(&mut self, problem: Problem) -> CaptureError {
        let error = problem.in_file(&self.path);
        self.failure = Some(error.clone());
        error
    }
}

/// An error before the file name is attached.
#[derive(Debug)]
struct Problem {
    offset: u64,
    message: String,
}

impl Problem {
    fn new(offset: u64, message: impl Into<String>) -> Self {
        Self { offset, message: message.into() }
    }

    fn read_failed(offset: u64, error: &io::Error) -> Self {
        Self::new(offset, format!("read failed: {error}"))
    }

    fn in_file(self, path: &Path) -> CaptureError {
        CaptureError { path: path.to_path_buf(), offset: self.offset, message: self.message }
    }
}

/// Where a frame's fields and bytes are, before they are borrowed from the buffer.
struct FrameLocation {
    link_type: u32,
    ts_nanos: u64,
    orig_len: u32,
    interface: u32,
    /// Range in the input buffer, valid until the next refill.
    data: Range<usize>,
}

/// A packet found inside a block, relative to the block's start.
struct PacketInBlock {
    link_type: u32,
    ts_nanos: u64,
    orig_len: u32,
    interface: u32,
    data_offset: usize,
    captured_len: usize,
}

impl PacketInBlock {
    /// Places the packet in the buffer, given where its block ended up.
    fn locate(self, block: &Range<usize>) -> FrameLocation {
        let start = block.start.saturating_add(self.data_offset);
        FrameLocation {
            link_type: self.link_type,
            ts_nanos: self.ts_nanos,
            orig_len: self.orig_len,
            interface: self.interface,
            data: start..start.saturating_add(self.captured_len),
        }
    }
}

#[derive(Debug)]
enum Format {
    Pcap(PcapState),
    PcapNg(PcapNgState),
}

impl Format {
    /// Recognizes the file by its first bytes and consumes its header.
    fn detect(input: &mut InputBuffer) -> Result<Self, Problem> {
        let available =
            input.fill(PCAP_FILE_HEADER_LEN).map_err(|error| Problem::read_failed(0, &error))?;
        if available == 0 {
            return Err(Problem::new(0, "empty file: not a pcap or pcapng capture"));
        }
        let magic = input.unread().get(..4).and_then(|head| <[u8; 4]>::try_from(head).ok());
        let Some(magic) = magic else {
            let message = format!("file of {available} bytes is too short for a capture header");
            return Err(Problem::new(0, message));
        };
        match magic {
            PCAPNG_SECTION_HEADER => {
                let mut pcapng = PcapNgState::default();
                // The first block is the section header; reading it now means a damaged one
                // fails at open, like a damaged pcap header does.
                match pcapng.next_block(input)? {
                    BlockOutcome::Skipped => Ok(Self::PcapNg(pcapng)),
                    BlockOutcome::End | BlockOutcome::Packet(..) => {
                        Err(Problem::new(0, "pcapng file does not start with a section header"))
                    }
                }
            }
            PCAP_MICROS_LE | PCAP_MICROS_BE | PCAP_NANOS_LE | PCAP_NANOS_BE | PCAP_MODIFIED_LE => {
                PcapState::from_header(input).map(Self::Pcap)
            }
            [0x1f, 0x8b, ..] => Err(Problem::new(
                0,
                "gzip-compressed file: decompress it first (not a pcap or pcapng capture)",
            )),
            ZSTD_MAGIC => Err(Problem::new(
                0,
                "zstd-compressed file: decompress it first (not a pcap or pcapng capture)",
            )),
            [a, b, c, d] => Err(Problem::new(
                0,
                format!(
                    "not a pcap or pcapng capture: unknown magic {a:02x} {b:02x} {c:02x} {d:02x}"
                ),
            )),
        }
    }
}

/// Classic pcap: one link type and snap length for the whole file. The header's time zone
/// field is ignored, as libpcap does: writers leave it 0 and stamp packets in UTC.
#[derive(Debug)]
struct PcapState {
    big_endian: bool,
    /// 1 for nanosecond files, 1000 for microsecond ones.
    nanos_per_fraction: u64,
    record_header_len: usize,
    link_type: u32,
    /// 0 means no limit.
    snaplen: u32,
}

impl PcapState {
    /// Decodes and consumes the 24-byte file header; the magic is known to be a pcap one.
    fn from_header(input: &mut InputBuffer) -> Result<Self, Problem> {
        let Some(header_bytes) = input.unread().get(..PCAP_FILE_HEADER_LEN) else {
            let message = format!(
                "truncated pcap file header: {} of {PCAP_FILE_HEADER_LEN} bytes",
                input.unread().len()
            );
            return Err(Problem::new(0, message));
        };
        let (_, header) = parse_pcap_header(header_bytes)
            .map_err(|error| Problem::new(0, describe_parse_error("pcap file header", error)))?;
        // libpcap has written version 2.4 since 1998; 1.x headers had another layout.
        if header.version_major != 2 {
            let message = format!(
                "unsupported pcap version {}.{}",
                header.version_major, header.version_minor
            );
            return Err(Problem::new(0, message));
        }
        // The upper 16 bits of the link-type field carry FCS details, not the link type;
        // pcap-parser hands the field over as i32, so take its bits back as u32.
        let link_type = u32::from_ne_bytes(header.network.0.to_ne_bytes()) & 0xffff;
        let state = Self {
            big_endian: header.is_bigendian(),
            nanos_per_fraction: if header.is_nanosecond_precision() { 1 } else { 1_000 },
            record_header_len: if header.is_modified_format() {
                PCAP_MODIFIED_RECORD_HEADER_LEN
            } else {
                PCAP_RECORD_HEADER_LEN
            },
            link_type,
            snaplen: header.snaplen,
        };
        input.consume(PCAP_FILE_HEADER_LEN);
        Ok(state)
    }

    fn next_frame(&mut self, input: &mut InputBuffer) -> Result<Option<FrameLocation>, Problem> {
        // Step 1: the record header, or a clean end of file.
        let record_offset = input.position();
        let available = input
            .fill(self.record_header_len)
            .map_err(|error| Problem::read_failed(record_offset, &error))?;
        if available == 0 {
            return Ok(None);
        }
        let captured_len = match read_u32(input.unread(), 8, self.big_endian) {
            Some(captured_len) if available >= self.record_header_len => captured_len,
            _ => {
                let message = format!(
                    "truncated record header: {available} of {} bytes before the end of the file",
                    self.record_header_len
                );
                return Err(Problem::new(record_offset, message));
            }
        };

        // Step 2: check the claimed size before reading that many bytes.
        if self.snaplen != 0 && captured_len > self.snaplen {
            let message = format!(
                "captured length {captured_len} exceeds the file's snap length {}",
                self.snaplen
            );
            return Err(Problem::new(record_offset, message));
        }
        let record_len = self.record_header_len.saturating_add(widen(captured_len));
        if record_len > MAX_BLOCK_SIZE {
            let message = format!(
                "record claims {captured_len} captured bytes, over the {MAX_BLOCK_SIZE}-byte limit"
            );
            return Err(Problem::new(record_offset, message));
        }
        let available =
            input.fill(record_len).map_err(|error| Problem::read_failed(record_offset, &error))?;
        let Some(record) = input.unread().get(..record_len) else {
            let message = format!(
                "truncated record: {captured_len} captured bytes claimed, {} left in the file",
                available.saturating_sub(self.record_header_len)
            );
            return Err(Problem::new(record_offset, message));
        };

        // Step 3: let pcap-parser decode it, then convert the timestamp.
        let parsed = if self.record_header_len == PCAP_MODIFIED_RECORD_HEADER_LEN {
            parse_pcap_frame_modified(record)
        } else if self.big_endian {
            parse_pcap_frame_be(record)
        } else {
            parse_pcap_frame(record)
        };
        let (_, block): (_, LegacyPcapBlock<'_>) = parsed.map_err(|error| {
            Problem::new(record_offset, describe_parse_error("pcap record", error))
        })?;
        // Cannot overflow: u32::MAX seconds is 4.3e18 ns, and u64 holds 1.8e19.
        let ts_nanos = u64::from(block.ts_sec) * NANOS_PER_SECOND
            + u64::from(block.ts_usec) * self.nanos_per_fraction;
        let orig_len = block.origlen;

        let record_range = input.consume(record_len);
        let packet = PacketInBlock {
            link_type: self.link_type,
            ts_nanos,
            orig_len,
            interface: 0,
            data_offset: self.record_header_len,
            captured_len: widen(captured_len),
        };
        Ok(Some(packet.locate(&record_range)))
    }
}

/// What the capturing interface said about its packets, from its Interface Description.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link_type: u32,
    /// 0 means no limit.
    snaplen: u32,
    ticks_per_second: u64,
    /// `if_tsoffset`: seconds to add to every timestamp.
    offset_seconds: i64,
}

impl Interface {
    /// Converts a pcapng 64-bit tick count to nanoseconds since the epoch.
    fn ts_nanos(&self, ts_high: u32, ts_low: u32) -> Option<u64> {
        let ticks = (u64::from(ts_high) << 32) | u64::from(ts_low);
        // In 128 bits nothing overflows: at most 1.8e19 ticks times 1e9.
        let nanos = u128::from(ticks) * u128::from(NANOS_PER_SECOND)
            / u128::from(self.ticks_per_second.max(1));
        let offset_nanos = i128::from(self.offset_seconds) * i128::from(NANOS_PER_SECOND);
        let total = i128::try_from(nanos).ok()?.checked_add(offset_nanos)?;
        u64::try_from(total).ok()
    }
}

/// pcapng: byte order and interfaces of the current section.
#[derive(Debug, Default)]
struct PcapNgState {
    big_endian: bool,
    interfaces: Vec<Interface>,
    /// Time of the last Enhanced Packet, lent to Simple Packets, which carry none.
    last_ts_nanos: u64,
}

enum BlockOutcome {
    End,
    Skipped,
    Packet(FrameLocation),
}

impl PcapNgState {
    fn next_frame(&mut self, input: &mut InputBuffer) -> Result<Option<FrameLocation>, Problem> {
        loop {
            match self.next_block(input)? {
                BlockOutcome::End => return Ok(None),
                BlockOutcome::Skipped => {}
                BlockOutcome::Packet(location) => return Ok(Some(location)),
            }
        }
    }

    /// Reads one whole block, updates the section state, and consumes the block.
    fn next_block(&mut self, input: &mut InputBuffer) -> Result<BlockOutcome, Problem> {
        // Step 1: the block header, or a clean end of file. A section header says its own
        // byte order; every other block uses the current section's.
        let block_offset = input.position();
        let available = input
            .fill(PCAPNG_BLOCK_OVERHEAD)
            .map_err(|error| Problem::read_failed(block_offset, &error))?;
        if available == 0 {
            return Ok(BlockOutcome::End);
        }
        let header = input.unread();
        let truncated_header = || {
            let message =
                format!("truncated block header: {available} bytes before the end of the file");
            Problem::new(block_offset, message)
        };
        let raw_type = header.get(..4).ok_or_else(truncated_header)?;
        let big_endian = if raw_type == PCAPNG_SECTION_HEADER {
            match header.get(8..12).ok_or_else(truncated_header)? {
                order if order == PCAPNG_BYTE_ORDER_LE => false,
                order if order == PCAPNG_BYTE_ORDER_BE => true,
                order => {
                    let message = format!("section header has a bad byte-order magic {order:02x?}");
                    return Err(Problem::new(block_offset, message));
                }
            }
        } else {
            self.big_endian
        };
        let (Some(block_type), Some(claimed_len)) =
            (read_u32(header, 0, big_endian), read_u32(header, 4, big_endian))
        else {
            return Err(truncated_header());
        };

        // Step 2: check the claimed length before reading that many bytes.
        let block_len = widen(claimed_len);
        if block_len < PCAPNG_BLOCK_OVERHEAD || block_len % 4 != 0 {
            let message = format!(
                "block of type {block_type:#x} has an invalid length {claimed_len} \
                 (at least 12 and a multiple of 4)"
            );
            return Err(Problem::new(block_offset, message));
        }
        if block_len > MAX_BLOCK_SIZE {
            let message = format!(
                "block of type {block_type:#x} claims {claimed_len} bytes, \
                 over the {MAX_BLOCK_SIZE}-byte limit"
            );
            return Err(Problem::new(block_offset, message));
        }
        let available =
            input.fill(block_len).map_err(|error| Problem::read_failed(block_offset, &error))?;
        let Some(block) = input.unread().get(..block_len) else {
            let message = format!(
                "truncated block of type {block_type:#x}: {claimed_len} bytes claimed, \
                 {available} left in the file"
            );
            return Err(Problem::new(block_offset, message));
        };
        if read_u32(block, block_len.saturating_sub(4), big_endian) != Some(claimed_len) {
            let message = format!(
                "block of type {block_type:#x}: trailing length differs from the leading \
                 {claimed_len}"
            );
            return Err(Problem::new(block_offset, message));
        }

        // Step 3: decode what matters for frames; skip the rest unread.
        let packet = match block_type {
            SHB_MAGIC => {
                self.start_section(block, big_endian)
                    .map_err(|message| Problem::new(block_offset, message))?;
                None
            }
            IDB_MAGIC => {
                self.add_interface(block).map_err(|message| Problem::new(block_offset, message))?;
                None
            }
            EPB_MAGIC => Some(
                self.enhanced_packet(block)
                    .map_err(|message| Problem::new(block_offset, message))?,
            ),
            SPB_MAGIC => Some(
                self.simple_packet(block).map_err(|message| Problem::new(block_offset, message))?,
            ),
            PCAPNG_OBSOLETE_PACKET_BLOCK => {
                // TODO: decode it if a real capture ever needs it; none of ours does.
                let message = "obsolete Packet Block (type 2) is not supported";
                return Err(Problem::new(block_offset, message));
            }
            _ => None,
        };
        let block_range = input.consume(block_len);
        Ok(match packet {
            Some(packet) => BlockOutcome::Packet(packet.locate(&block_range)),
            None => BlockOutcome::Skipped,
        })
    }

    /// A Section Header Block: new byte order, and no interfaces until described again.
    fn start_section(&mut self, block: &[u8], big_endian: bool) -> Result<(), String> {
        check_min_len(block, PCAPNG_SECTION_HEADER_MIN_LEN, "section header block")?;
        let (_, header) = parse_sectionheaderblock(block)
            .map_err(|error| describe_parse_error("section header block", error))?;
        if header.major_version != 1 {
            return Err(format!(
                "unsupported pcapng version {}.{}",
                header.major_version, header.minor_version
            ));
        }
        self.big_endian = big_endian;
        self.interfaces.clear();
        Ok(())
    }

    /// An Interface Description Block: link type, snap length and clock of one interface.
    fn add_interface(&mut self, block: &[u8]) -> Result<(), String> {
        check_min_len(block, PCAPNG_INTERFACE_MIN_LEN, "interface description block")?;
        if self.interfaces.len() >= MAX_INTERFACES_PER_SECTION {
            return Err(format!(
                "more than {MAX_INTERFACES_PER_SECTION} interfaces in one section"
            ));
        }
        let parsed = if self.big_endian {
            parse_interfacedescriptionblock_be(block)
        } else {
            parse_interfacedescriptionblock_le(block)
        };
        let (_, description) =
            parsed.map_err(|error| describe_parse_error("interface description block", error))?;

        // Option values come raw in the section's byte order; pcap-parser 0.17 decodes
        // if_tsoffset as little-endian and rejects every power-of-2 if_tsresol, so both are
        // read here instead.
        let mut tsresol = PCAPNG_DEFAULT_TSRESOL;
        let mut offset_seconds = 0;
        for option in &description.options {
            if option.code == OptionCode::IfTsresol {
                let [resolution] = option.as_bytes().unwrap_or_default() else {
                    return Err(format!("if_tsresol option of {} bytes, not 1", option.len));
                };
                tsresol = *resolution;
            } else if option.code == OptionCode::IfTsoffset {
                let bytes = option.as_bytes().unwrap_or_default();
                let Ok(bytes) = <[u8; 8]>::try_from(bytes) else {
                    return Err(format!("if_tsoffset option of {} bytes, not 8", option.len));
                };
                offset_seconds = if self.big_endian {
                    i64::from_be_bytes(bytes)
                } else {
                    i64::from_le_bytes(bytes)
                };
            }
        }
        let Some(ticks_per_second) = ticks_per_second(tsresol) else {
            return Err(format!("unsupported timestamp resolution if_tsresol={tsresol:#04x}"));
        };
        // The block holds the link type in 16 bits, which pcap-parser widens to i32.
        let link_type = u32::try_from(description.linktype.0)
            .map_err(|_| format!("invalid link type {}", description.linktype.0))?;
        self.interfaces.push(Interface {
            link_type,
            snaplen: description.snaplen,
            ticks_per_second,
            offset_seconds,
        });
        Ok(())
    }

    /// An Enhanced Packet Block: a packet with its interface and timestamp.
    fn enhanced_packet(&mut self, block: &[u8]) -> Result<PacketInBlock, String> {
        check_min_len(block, PCAPNG_ENHANCED_PACKET_MIN_LEN, "enhanced packet block")?;
        // Checked here, not left to the parser, for a message that says what is wrong.
        let room = block.len().saturating_sub(PCAPNG_ENHANCED_PACKET_MIN_LEN);
        let captured_len = read_u32(block, 20, self.big_endian).unwrap_or(u32::MAX);
        if widen(captured_len) > room {
            return Err(format!(
                "captured length {captured_len} exceeds the {room} data bytes of its block"
            ));
        }
        let parsed = if self.big_endian {
            parse_enhancedpacketblock_be(block)
        } else {
            parse_enhancedpacketblock_le(block)
        };
        let (_, packet) =
            parsed.map_err(|error| describe_parse_error("enhanced packet block", error))?;

        let Some(interface) = self.interfaces.get(widen(packet.if_id)) else {
            return Err(format!(
                "packet from interface {}, but the section describes {} interface(s)",
                packet.if_id,
                self.interfaces.len()
            ));
        };
        if interface.snaplen != 0 && packet.caplen > interface.snaplen {
            return Err(format!(
                "captured length {} exceeds interface {}'s snap length {}",
                packet.caplen, packet.if_id, interface.snaplen
            ));
        }
        let Some(ts_nanos) = interface.ts_nanos(packet.ts_high, packet.ts_low) else {
            return Err("timestamp outside 1970..2554, the range of u64 nanoseconds".into());
        };
        self.last_ts_nanos = ts_nanos;
        Ok(PacketInBlock {
            link_type: interface.link_type,
            ts_nanos,
            orig_len: packet.origlen,
            interface: packet.if_id,
            data_offset: PCAPNG_ENHANCED_PACKET_DATA_OFFSET,
            captured_len: widen(packet.caplen),
        })
    }

    /// A Simple Packet Block: a packet from interface 0, without a timestamp. Its captured
    /// length is not stored: it is the original length, cut at the snap length and at the
    /// block's end.
    fn simple_packet(&mut self, block: &[u8]) -> Result<PacketInBlock, String> {
        check_min_len(block, PCAPNG_SIMPLE_PACKET_MIN_LEN, "simple packet block")?;
        let Some(interface) = self.interfaces.first() else {
            return Err("simple packet block, but the section describes no interface".into());
        };
        let parsed = if self.big_endian {
            parse_simplepacketblock_be(block)
        } else {
            parse_simplepacketblock_le(block)
        };
        let (_, packet) =
            parsed.map_err(|error| describe_parse_error("simple packet block", error))?;
        let mut captured_len = packet.data.len().min(widen(packet.origlen));
        if interface.snaplen != 0 {
            captured_len = captured_len.min(widen(interface.snaplen));
        }
        Ok(PacketInBlock {
            link_type: interface.link_type,
            ts_nanos: self.last_ts_nanos,
            orig_len: packet.origlen,
            interface: 0,
            data_offset: PCAPNG_SIMPLE_PACKET_DATA_OFFSET,
            captured_len,
        })
    }
}

/// Ticks per second for an `if_tsresol` value: 10^n, or 2^n when the top bit is set.
fn ticks_per_second(tsresol: u8) -> Option<u64> {
    let exponent = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 { 10u64.checked_pow(exponent) } else { 2u64.checked_pow(exponent) }
}

fn check_min_len(block: &[u8], min_len: usize, what: &str) -> Result<(), String> {
    if block.len() < min_len {
        return Err(format!("{what} of {} bytes, shorter than the minimum {min_len}", block.len()));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let field: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(field) } else { u32::from_le_bytes(field) })
}

/// u32 to usize; saturates on 16-bit targets, where the size limits then reject the value.
fn widen(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Words for a pcap-parser error. The whole block was in hand, so "incomplete" means a
/// field inside it points past its end. The input bytes are left out: they can be large.
fn describe_parse_error(what: &str, error: nom::Err<PcapError<&[u8]>>) -> String {
    match error {
        nom::Err::Incomplete(_) => format!("malformed {what}: a field runs past the block's end"),
        nom::Err::Error(error) | nom::Err::Failure(error) => match error {
            PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                format!("malformed {what}: {kind:?} check failed")
            }
            PcapError::HeaderNotRecognized => format!("malformed {what}: header not recognized"),
            other => format!("malformed {what}: {other}"),
        },
    }
}

/// The file's bytes, read in large chunks into one reusable buffer.
///
/// ```text
///   buffer: [ consumed | unread          | free        ]
///           0          start             end           buffer.len()
/// ```
///
/// Consumed bytes stay in place until the next `fill`, so a frame can borrow them.
struct InputBuffer {
    source: Box<dyn Read + Send>,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buffer[start]`.
    position: u64,
    /// The source has returned end of file; it is not asked again.
    exhausted: bool,
}

impl InputBuffer {
    fn new(source: Box<dyn Read + Send>) -> Self {
        Self {
            source,
            buffer: vec![0; INITIAL_BUFFER_SIZE],
            start: 0,
            end: 0,
            position: 0,
            exhausted: false,
        }
    }

    /// Makes `wanted` unread bytes available, or all that remain when the file ends first;
    /// returns how many are available. Never grows the buffer beyond [`MAX_BLOCK_SIZE`].
    fn fill(&mut self, wanted: usize) -> io::Result<usize> {
        // Callers check block sizes first; clamping keeps memory bounded regardless.
        let wanted = wanted.min(MAX_BLOCK_SIZE);
        let mut available = self.end - self.start;
        if available >= wanted || self.exhausted {
            return Ok(available);
        }

        // Slide the unread bytes to the front when the block would not fit behind them.
        if self.start + wanted > self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = available;
        }

        while available < wanted {
            // Grow only when full, by doubling: memory follows the bytes the file really
            // holds, not what a (possibly corrupt) length field claims.
            if self.end == self.buffer.len() {
                let grown = self.buffer.len().saturating_mul(2).min(wanted);
                self.buffer.resize(grown.max(self.end + 1), 0);
            }
            let Some(space) = self.buffer.get_mut(self.end..) else {
                break;
            };
            match self.source.read(space) {
                Ok(0) => {
                    self.exhausted = true;
                    break;
                }
                Ok(count) => {
                    self.end += count;
                    available += count;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(available)
    }

    fn unread(&self) -> &[u8] {
        self.buffer.get(self.start..self.end).unwrap_or_default()
    }

    /// File offset of the first unread byte.
    fn position(&self) -> u64 {
        self.position
    }

    /// Marks `len` bytes read and returns where they sit in the buffer, which stays valid
    /// until the next `fill`.
    fn consume(&mut self, len: usize) -> Range<usize> {
        let len = len.min(self.end - self.start);
        let range = self.start..self.start + len;
        self.start += len;
        self.position += len as u64;
        range
    }

    /// Bytes consumed earlier, by the range `consume` returned.
    fn consumed_bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        if range.end > self.start {
            return None;
        }
        self.buffer.get(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A frame copied out of the reader, so tests can collect them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct OwnedFrame {
        link_type: u32,
        ts_nanos: u64,
        data: Vec<u8>,
        orig_len: u32,
        interface: u32,
    }

    impl From<Frame<'_>> for OwnedFrame {
        fn from(frame: Frame<'_>) -> Self {
            Self {
                link_type: frame.link_type,
                ts_nanos: frame.ts_nanos,
                data: frame.data.to_vec(),
                orig_len: frame.orig_len,
                interface: frame.interface,
            }
        }
    }

    fn open_bytes(bytes: &[u8]) -> Result<CaptureReader, CaptureError> {
        let total = bytes.len() as u64;
        CaptureReader::from_source(
            Path::new("test.cap"),
            Box::new(Cursor::new(bytes.to_vec())),
            total,
        )
    }

    /// Reads to the end; returns the frames and the error that stopped it, if any. Bounded,
    /// so a reader that loops forever fails the test instead of hanging it.
    fn read_all(mut reader: CaptureReader) -> (Vec<OwnedFrame>, Option<CaptureError>) {
        let mut frames = Vec::new();
        for _ in 0..100_000 {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame.into()),
                Ok(None) => return (frames, None),
                Err(error) => return (frames, Some(error)),
            }
        }
        panic!("reader did not finish");
    }

    fn read_bytes(bytes: &[u8]) -> (Vec<OwnedFrame>, Option<CaptureError>) {
        match open_bytes(bytes) {
            Ok(reader) => read_all(reader),
            Err(error) => (Vec::new(), Some(error)),
        }
    }

    fn frames_ok(bytes: &[u8]) -> Vec<OwnedFrame> {
        let (frames, error) = read_bytes(bytes);
        assert_eq!(error, None);
        frames
    }

    fn error_of(bytes: &[u8]) -> CaptureError {
        read_bytes(bytes).1.expect("an error")
    }

    fn put_u16(out: &mut Vec<u8>, value: u16, big_endian: bool) {
        out.extend(if big_endian { value.to_be_bytes() } else { value.to_le_bytes() });
    }

    fn put_u32(out: &mut Vec<u8>, value: u32, big_endian: bool) {
        out.extend(if big_endian { value.to_be_bytes() } else { value.to_le_bytes() });
    }

    // ---- classic pcap ----

    struct PcapRecord<'a> {
        seconds: u32,
        fraction: u32,
        data: &'a [u8],
        orig_len: u32,
    }

    /// A pcap file; `magic` is 0xa1b2c3d4 (µs) or 0xa1b23c4d (ns), written in `big_endian`.
    fn pcap_file(magic: u32, big_endian: bool, snaplen: u32, records: &[PcapRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, magic, big_endian);
        put_u16(&mut out, 2, big_endian); // version 2.4
        put_u16(&mut out, 4, big_endian);
        put_u32(&mut out, 0, big_endian); // thiszone
        put_u32(&mut out, 0, big_endian); // sigfigs
        put_u32(&mut out, snaplen, big_endian);
        put_u32(&mut out, 1, big_endian); // LINKTYPE_ETHERNET
        for record in records {
            put_u32(&mut out, record.seconds, big_endian);
            put_u32(&mut out, record.fraction, big_endian);
            put_u32(&mut out, record.data.len() as u32, big_endian);
            put_u32(&mut out, record.orig_len, big_endian);
            out.extend_from_slice(record.data);
        }
        out
    }

    const MICROS: u32 = 0xa1b2_c3d4;
    const NANOS: u32 = 0xa1b2_3c4d;

    fn two_records() -> [PcapRecord<'static>; 2] {
        [
            PcapRecord { seconds: 1_700_000_000, fraction: 123_456, data: b"first", orig_len: 5 },
            PcapRecord {
                seconds: 1_700_000_001,
                fraction: 999_999,
                data: b"second!",
                orig_len: 60,
            },
        ]
    }

    #[test]
    fn pcap_microseconds_both_byte_orders() {
        for big_endian in [false, true] {
            let bytes = pcap_file(MICROS, big_endian, 65_535, &two_records());
            let frames = frames_ok(&bytes);
            assert_eq!(frames.len(), 2, "big_endian={big_endian}");
            assert_eq!(frames[0].ts_nanos, 1_700_000_000_123_456_000);
            assert_eq!(frames[0].data, b"first");
            assert_eq!(frames[0].link_type, 1);
            assert_eq!(frames[0].interface, 0);
            assert_eq!(frames[1].ts_nanos, 1_700_000_001_999_999_000);
            assert_eq!(frames[1].data, b"second!");
            assert_eq!(frames[1].orig_len, 60);
        }
    }

    #[test]
    fn pcap_nanoseconds_both_byte_orders() {
        for big_endian in [false, true] {
            let bytes = pcap_file(NANOS, big_endian, 0, &two_records());
            let frames = frames_ok(&bytes);
            assert_eq!(frames[0].ts_nanos, 1_700_000_000_000_123_456, "big_endian={big_endian}");
            assert_eq!(frames[1].ts_nanos, 1_700_000_001_000_999_999);
        }
    }

    #[test]
    fn pcap_magic_bytes_are_the_four_known_ones() {
        assert_eq!(pcap_file(MICROS, false, 0, &[])[..4], PCAP_MICROS_LE);
        assert_eq!(pcap_file(MICROS, true, 0, &[])[..4], PCAP_MICROS_BE);
        assert_eq!(pcap_file(NANOS, false, 0, &[])[..4], PCAP_NANOS_LE);
        assert_eq!(pcap_file(NANOS, true, 0, &[])[..4], PCAP_NANOS_BE);
    }

    #[test]
    fn pcap_link_type_drops_fcs_bits() {
        let mut bytes = pcap_file(MICROS, false, 0, &two_records());
        // LINKTYPE_ETHERNET with the "FCS present, 4 bytes" bits of the newer spec.
        bytes[20..24].copy_from_slice(&(1u32 | 0x1000_0000 | 0x0400_0000).to_le_bytes());
        assert!(frames_ok(&bytes).iter().all(|frame| frame.link_type == 1));
    }

    #[test]
    fn pcap_modified_format() {
        let mut bytes = pcap_file(0xa1b2_cd34, false, 0, &[]);
        let mut record = Vec::new();
        for field in [7u32, 500, 3, 9, 0, 0] {
            put_u32(&mut record, field, false); // times, lengths, ifindex/protocol/type/pad
        }
        bytes.extend_from_slice(&record);
        bytes.extend_from_slice(b"abc");
        let frames = frames_ok(&bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, b"abc");
        assert_eq!(frames[0].orig_len, 9);
        assert_eq!(frames[0].ts_nanos, 7_000_500_000);
    }

    #[test]
    fn pcap_header_only_is_empty() {
        for magic in [MICROS, NANOS] {
            let reader = open_bytes(&pcap_file(magic, true, 0, &[])).expect("opens");
            assert_eq!(reader.bytes_read(), 24);
            let (frames, error) = read_all(reader);
            assert!(frames.is_empty() && error.is_none());
        }
    }

    #[test]
    fn pcap_truncated_last_record_names_its_offset() {
        let bytes = pcap_file(MICROS, false, 0, &two_records());
        let second_record = 24 + 16 + 5;
        for cut in [second_record + 3, second_record + 16, bytes.len() - 1] {
            let (frames, error) = read_bytes(&bytes[..cut]);
            assert_eq!(frames.len(), 1, "cut at {cut}");
            let error = error.expect("truncation is an error");
            assert_eq!(error.offset, second_record as u64, "cut at {cut}: {error}");
            assert!(error.message.contains("truncated"), "{error}");
        }
    }

    #[test]
    fn pcap_caplen_over_snaplen_is_an_error() {
        let bytes = pcap_file(MICROS, false, 6, &two_records());
        let (frames, error) = read_bytes(&bytes);
        assert_eq!(frames.len(), 1);
        let error = error.expect("an error");
        assert_eq!(error.offset, 24 + 16 + 5);
        assert!(error.message.contains("snap length 6"), "{error}");
    }

    #[test]
    fn pcap_huge_record_is_refused_before_reading() {
        let mut bytes = pcap_file(MICROS, false, 0, &two_records());
        bytes[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = error_of(&bytes);
        assert_eq!(error.offset, 24);
        assert!(error.message.contains("limit"), "{error}");
    }

    #[test]
    fn pcap_short_or_old_headers() {
        let bytes = pcap_file(MICROS, false, 0, &[]);
        assert!(error_of(&bytes[..10]).message.contains("truncated pcap file header"));
        let mut old = bytes.clone();
        old[4] = 1; // version 1.4
        assert!(error_of(&old).message.contains("unsupported pcap version 1.4"));
    }

    // ---- pcapng ----

    /// Builds a pcapng file block by block in one byte order.
    struct PcapNgWriter {
        big_endian: bool,
        bytes: Vec<u8>,
    }

    impl PcapNgWriter {
        fn new(big_endian: bool) -> Self {
            let mut writer = Self { big_endian, bytes: Vec::new() };
            writer.section();
            writer
        }

        fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Self {
            let mut padded = body.to_vec();
            padded.resize(body.len().div_ceil(4) * 4, 0);
            let total = (padded.len() + 12) as u32;
            put_u32(&mut self.bytes, block_type, self.big_endian);
            put_u32(&mut self.bytes, total, self.big_endian);
            self.bytes.extend_from_slice(&padded);
            put_u32(&mut self.bytes, total, self.big_endian);
            self
        }

        fn section(&mut self) -> &mut Self {
            let mut body = Vec::new();
            put_u32(&mut body, 0x1a2b_3c4d, self.big_endian);
            put_u16(&mut body, 1, self.big_endian); // version 1.0
            put_u16(&mut body, 0, self.big_endian);
            body.extend(if self.big_endian {
                (-1i64).to_be_bytes()
            } else {
                (-1i64).to_le_bytes()
            });
            self.block(SHB_MAGIC, &body)
        }

        /// `options` are (code, value) pairs; the end-of-options marker is added.
        fn interface(
            &mut self,
            link_type: u16,
            snaplen: u32,
            options: &[(u16, &[u8])],
        ) -> &mut Self {
            let mut body = Vec::new();
            put_u16(&mut body, link_type, self.big_endian);
            put_u16(&mut body, 0, self.big_endian);
            put_u32(&mut body, snaplen, self.big_endian);
            for (code, value) in options {
                put_u16(&mut body, *code, self.big_endian);
                put_u16(&mut body, value.len() as u16, self.big_endian);
                body.extend_from_slice(value);
                body.resize(body.len().div_ceil(4) * 4, 0);
            }
            if !options.is_empty() {
                put_u32(&mut body, 0, self.big_endian);
            }
            self.block(IDB_MAGIC, &body)
        }

        fn enhanced(
            &mut self,
            interface: u32,
            ticks: u64,
            data: &[u8],
            orig_len: u32,
        ) -> &mut Self {
            let mut body = Vec::new();
            put_u32(&mut body, interface, self.big_endian);
            put_u32(&mut body, (ticks >> 32) as u32, self.big_endian);
            put_u32(&mut body, ticks as u32, self.big_endian);
            put_u32(&mut body, data.len() as u32, self.big_endian);
            put_u32(&mut body, orig_len, self.big_endian);
            body.extend_from_slice(data);
            self.block(EPB_MAGIC, &body)
        }

        fn simple(&mut self, orig_len: u32, data: &[u8]) -> &mut Self {
            let mut body = Vec::new();
            put_u32(&mut body, orig_len, self.big_endian);
            body.extend_from_slice(data);
            self.block(SPB_MAGIC, &body)
        }

        fn i64_bytes(&self, value: i64) -> [u8; 8] {
            if self.big_endian { value.to_be_bytes() } else { value.to_le_bytes() }
        }
    }

    const NAME_RESOLUTION_BLOCK: u32 = 4;
    const INTERFACE_STATISTICS_BLOCK: u32 = 5;
    const CUSTOM_BLOCK: u32 = 0x0bad;
    const LINKTYPE_ETHERNET: u16 = 1;
    const LINKTYPE_RAW: u16 = 101;
    const IF_TSRESOL: u16 = 9;
    const IF_TSOFFSET: u16 = 14;

    /// Two interfaces (Ethernet in µs, raw IP in ns), packets on both, an SPB, and blocks
    /// the reader must skip.
    fn two_interfaces(big_endian: bool) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(big_endian);
        writer
            .interface(LINKTYPE_ETHERNET, 8, &[])
            .interface(LINKTYPE_RAW, 0, &[(IF_TSRESOL, &[9]), (2, b"raw0")])
            .block(NAME_RESOLUTION_BLOCK, &[0, 0, 0, 0])
            .enhanced(0, 1_700_000_000_250_000, b"eth-0", 64)
            .enhanced(1, 1_700_000_001_000_000_007, b"raw-ip", 6)
            .block(CUSTOM_BLOCK, b"\0\0\0\x01vendor data")
            .simple(12, b"0123456789ab")
            .block(INTERFACE_STATISTICS_BLOCK, &[0; 12]);
        writer.bytes
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_skipped_blocks() {
        for big_endian in [false, true] {
            let bytes = two_interfaces(big_endian);
            let frames = frames_ok(&bytes);
            assert_eq!(frames.len(), 3, "big_endian={big_endian}");
            assert_eq!(frames[0].link_type, 1);
            assert_eq!(frames[0].interface, 0);
            assert_eq!(frames[0].ts_nanos, 1_700_000_000_250_000_000);
            assert_eq!(frames[0].data, b"eth-0");
            assert_eq!(frames[0].orig_len, 64);
            assert_eq!(frames[1].link_type, 101);
            assert_eq!(frames[1].interface, 1);
            assert_eq!(frames[1].ts_nanos, 1_700_000_001_000_000_007);
            assert_eq!(frames[1].data, b"raw-ip");
            // The SPB: interface 0's link type, cut at its snap length of 8, previous time.
            assert_eq!(frames[2].link_type, 1);
            assert_eq!(frames[2].data, b"01234567");
            assert_eq!(frames[2].orig_len, 12);
            assert_eq!(frames[2].ts_nanos, frames[1].ts_nanos);
        }
    }

    #[test]
    fn pcapng_simple_packet_drops_padding() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_RAW, 0, &[]).simple(5, b"hello");
        let frames = frames_ok(&writer.bytes);
        assert_eq!(frames[0].data, b"hello");
        assert_eq!(frames[0].ts_nanos, 0);
    }

    #[test]
    fn pcapng_power_of_two_resolution_and_offset() {
        for big_endian in [false, true] {
            let mut writer = PcapNgWriter::new(big_endian);
            let offset = writer.i64_bytes(1_000);
            // 2^-10 s ticks: 2048 ticks are 2 s, plus 1000 s of if_tsoffset.
            writer
                .interface(
                    LINKTYPE_ETHERNET,
                    0,
                    &[(IF_TSRESOL, &[0x80 | 10]), (IF_TSOFFSET, &offset)],
                )
                .enhanced(0, 2_048 + 512, b"x", 1);
            let frames = frames_ok(&writer.bytes);
            assert_eq!(frames[0].ts_nanos, 1_002_500_000_000, "big_endian={big_endian}");
        }
    }

    #[test]
    fn pcapng_negative_time_is_an_error() {
        let mut writer = PcapNgWriter::new(false);
        let offset = writer.i64_bytes(-10);
        writer.interface(LINKTYPE_ETHERNET, 0, &[(IF_TSOFFSET, &offset)]).enhanced(0, 0, b"x", 1);
        assert!(error_of(&writer.bytes).message.contains("timestamp"));
    }

    #[test]
    fn pcapng_bad_resolution_is_an_error() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 0, &[(IF_TSRESOL, &[20])]);
        assert!(error_of(&writer.bytes).message.contains("if_tsresol=0x14"));
        assert_eq!(ticks_per_second(19), Some(10_000_000_000_000_000_000));
        assert_eq!(ticks_per_second(0x80 | 63), Some(1 << 63));
        assert_eq!(ticks_per_second(0x80 | 64), None);
    }

    #[test]
    fn pcapng_new_section_resets_interfaces_and_byte_order() {
        let mut first = PcapNgWriter::new(false);
        first
            .interface(LINKTYPE_RAW, 0, &[])
            .interface(LINKTYPE_ETHERNET, 0, &[])
            .enhanced(1, 5, b"a", 1);
        let mut second = PcapNgWriter::new(true);
        second.interface(LINKTYPE_ETHERNET, 0, &[(IF_TSRESOL, &[3])]).enhanced(0, 7, b"b", 1);

        let mut bytes = first.bytes.clone();
        bytes.extend_from_slice(&second.bytes);
        let frames = frames_ok(&bytes);
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].link_type, frames[0].interface), (1, 1));
        assert_eq!(
            (frames[1].link_type, frames[1].interface, frames[1].ts_nanos),
            (1, 0, 7_000_000)
        );

        // Interface 1 existed only in the first section.
        second.enhanced(1, 8, b"c", 1);
        let mut bytes = first.bytes.clone();
        let second_start = bytes.len();
        bytes.extend_from_slice(&second.bytes);
        let (frames, error) = read_bytes(&bytes);
        assert_eq!(frames.len(), 2);
        let error = error.expect("unknown interface");
        assert!(error.message.contains("interface 1"), "{error}");
        assert!(error.offset > second_start as u64);
    }

    #[test]
    fn pcapng_unknown_interface_is_an_error() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 0, &[]).enhanced(3, 0, b"x", 1);
        let error = error_of(&writer.bytes);
        assert!(error.message.contains("interface 3"), "{error}");
        assert_eq!(error.offset, 28 + 20);
    }

    #[test]
    fn pcapng_packet_before_any_interface_is_an_error() {
        let mut writer = PcapNgWriter::new(true);
        writer.simple(3, b"abc");
        assert!(error_of(&writer.bytes).message.contains("no interface"));
    }

    #[test]
    fn pcapng_caplen_over_snaplen_or_block_is_an_error() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 4, &[]).enhanced(0, 0, b"12345", 5);
        assert!(error_of(&writer.bytes).message.contains("snap length 4"));

        let mut writer = PcapNgWriter::new(true);
        writer.interface(LINKTYPE_ETHERNET, 0, &[]).enhanced(0, 0, b"1234", 4);
        let epb = 28 + 20;
        writer.bytes[epb + 20..epb + 24].copy_from_slice(&9u32.to_be_bytes()); // caplen 9 > 4
        let error = error_of(&writer.bytes);
        assert!(error.message.contains("exceeds the 4 data bytes"), "{error}");
        assert_eq!(error.offset, epb as u64);
    }

    #[test]
    fn pcapng_bad_block_lengths() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 0, &[]);
        let idb = 28;
        let mut odd = writer.bytes.clone();
        odd[idb + 4..idb + 8].copy_from_slice(&21u32.to_le_bytes());
        assert!(error_of(&odd).message.contains("invalid length 21"));

        let mut huge = writer.bytes.clone();
        huge[idb + 4..idb + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(error_of(&huge).message.contains("limit"));

        let mut mismatched = writer.bytes.clone();
        let last = mismatched.len() - 4;
        mismatched[last..].copy_from_slice(&24u32.to_le_bytes());
        assert!(error_of(&mismatched).message.contains("trailing length"));
    }

    #[test]
    fn memory_follows_the_file_not_the_claim() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 0, &[]).enhanced(0, 0, b"x", 1);
        let epb = 28 + 20;
        let claim = (MAX_BLOCK_SIZE - 4) as u32;
        writer.bytes[epb + 4..epb + 8].copy_from_slice(&claim.to_le_bytes());
        let mut reader = open_bytes(&writer.bytes).expect("opens");
        let error = reader.next_frame().unwrap_err();
        assert!(error.message.contains("truncated"), "{error}");
        assert_eq!(reader.input.buffer.len(), INITIAL_BUFFER_SIZE);
    }

    #[test]
    fn pcapng_truncated_block_names_its_offset() {
        let bytes = two_interfaces(false);
        let full = frames_ok(&bytes);
        let last_block_start = bytes.len() - 24; // the statistics block
        let (frames, error) = read_bytes(&bytes[..bytes.len() - 2]);
        assert_eq!(frames, full);
        let error = error.expect("truncated");
        assert_eq!(error.offset, last_block_start as u64);
        assert!(error.message.contains("truncated"), "{error}");
    }

    #[test]
    fn pcapng_section_header_only_is_empty() {
        let writer = PcapNgWriter::new(true);
        let reader = open_bytes(&writer.bytes).expect("opens");
        assert_eq!(reader.bytes_read(), 28);
        let (frames, error) = read_all(reader);
        assert!(frames.is_empty() && error.is_none());
    }

    #[test]
    fn pcapng_damaged_first_section_fails_at_open() {
        let mut bytes = PcapNgWriter::new(false).bytes;
        bytes[8] = 0x99; // byte-order magic
        assert!(open_bytes(&bytes).unwrap_err().message.contains("byte-order magic"));
        let mut bytes = PcapNgWriter::new(false).bytes;
        bytes[12] = 2; // major version 2
        assert!(open_bytes(&bytes).unwrap_err().message.contains("version 2.0"));
    }

    #[test]
    fn pcapng_obsolete_packet_block_is_refused() {
        let mut writer = PcapNgWriter::new(false);
        writer.interface(LINKTYPE_ETHERNET, 0, &[]).block(PCAPNG_OBSOLETE_PACKET_BLOCK, &[0; 20]);
        assert!(error_of(&writer.bytes).message.contains("obsolete"));
    }

    // ---- files that are not captures ----

    #[test]
    fn empty_short_and_garbage_inputs() {
        assert!(error_of(b"").message.contains("empty file"));
        assert!(error_of(b"\xd4\xc3").message.contains("too short"));
        let error = error_of(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        assert_eq!(error.offset, 0);
        assert!(error.message.contains("unknown magic 47 45 54 20"), "{error}");
        assert!(error_of(b"\x1f\x8b\x08\0\0\0\0\0\0\0").message.contains("gzip"));
    }

    #[test]
    fn errors_are_sticky() {
        let bytes = pcap_file(MICROS, false, 0, &two_records());
        let mut reader = open_bytes(&bytes[..bytes.len() - 1]).expect("opens");
        assert!(reader.next_frame().expect("first frame").is_some());
        let first = reader.next_frame().unwrap_err();
        let again = reader.next_frame().unwrap_err();
        assert_eq!(first, again);
    }

    // ---- buffering ----

    /// Hands out one byte per read, with an interruption every few calls.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        calls: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            match (self.bytes.get(self.at), out.first_mut()) {
                (Some(byte), Some(slot)) => {
                    *slot = *byte;
                    self.at += 1;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_give_the_same_frames() {
        for bytes in [two_interfaces(true), pcap_file(NANOS, true, 0, &two_records())] {
            let source = Trickle { bytes: bytes.clone(), at: 0, calls: 0 };
            let reader =
                CaptureReader::from_source(Path::new("t"), Box::new(source), 0).expect("opens");
            let (frames, error) = read_all(reader);
            assert_eq!(error, None);
            assert_eq!(frames, frames_ok(&bytes));
        }
    }

    #[test]
    fn buffer_grows_for_large_blocks_and_bytes_read_reaches_the_end() {
        let big = vec![0x5a; INITIAL_BUFFER_SIZE * 3 + 1];
        let mut writer = PcapNgWriter::new(false);
        writer
            .interface(LINKTYPE_ETHERNET, 0, &[])
            .enhanced(0, 1, b"small", 5)
            .enhanced(0, 2, &big, big.len() as u32)
            .enhanced(0, 3, b"after", 5);
        let total = writer.bytes.len() as u64;
        let mut reader = open_bytes(&writer.bytes).expect("opens");
        let mut sizes = Vec::new();
        while let Some(frame) = reader.next_frame().expect("reads") {
            sizes.push(frame.data.len());
            assert!(reader_len_ok(frame.data));
        }
        assert_eq!(sizes, [5, big.len(), 5]);
        assert_eq!(reader.bytes_read(), total);
        assert_eq!(reader.total_bytes(), total);
        assert!(reader.input.buffer.len() <= MAX_BLOCK_SIZE);
    }

    fn reader_len_ok(data: &[u8]) -> bool {
        data == b"small" || data == b"after" || data.iter().all(|byte| *byte == 0x5a)
    }

    // ---- damaged input never panics or hangs ----

    #[test]
    fn every_truncation_and_many_corruptions_end_cleanly() {
        let mut samples = vec![
            two_interfaces(false),
            two_interfaces(true),
            pcap_file(MICROS, false, 0, &two_records()),
            pcap_file(NANOS, true, 0, &two_records()),
        ];
        let mut sections = two_interfaces(true);
        sections.extend(two_interfaces(false));
        samples.push(sections);

        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for sample in &samples {
            for cut in 0..sample.len() {
                let _ = read_bytes(&sample[..cut]);
            }
            for position in 0..sample.len() {
                for flip in [0xff_u8, 0x80, 0x01] {
                    let mut damaged = sample.clone();
                    damaged[position] ^= flip;
                    let _ = read_bytes(&damaged);
                }
            }
            // Random multi-byte damage from a fixed xorshift sequence.
            for _ in 0..2_000 {
                let mut damaged = sample.clone();
                for _ in 0..4 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let position = (seed % damaged.len() as u64) as usize;
                    damaged[position] = (seed >> 32) as u8;
                }
                let _ = read_bytes(&damaged);
            }
        }
    }

    // ---- real files ----

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(name: &str, bytes: &[u8]) -> Self {
            let path = std::env::temp_dir()
                .join(format!("combo-capture-test-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).expect("temp file written");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn open_reads_files_and_names_them_in_errors() {
        let bytes = two_interfaces(false);
        let good = TempFile::with("good.pcapng", &bytes);
        let reader = CaptureReader::open(&good.0).expect("opens");
        assert_eq!(reader.total_bytes(), bytes.len() as u64);
        assert_eq!(read_all(reader).0.len(), 3);

        let empty = TempFile::with("empty.pcap", b"");
        let error = CaptureReader::open(&empty.0).unwrap_err();
        assert_eq!(error.path, empty.0);
        assert_eq!(
            error.to_string(),
            format!("{}: at byte 0: empty file: not a pcap or pcapng capture", empty.0.display())
        );

        let missing = std::env::temp_dir().join("combo-capture-test-does-not-exist.pcap");
        let error = CaptureReader::open(&missing).unwrap_err();
        assert!(error.message.starts_with("cannot open"), "{error}");
    }
}
