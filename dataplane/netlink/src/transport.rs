//! One request and its replies on a netlink socket, whatever the family: rtnetlink
//! ([`crate::Netlink`]) and generic netlink ([`crate::ethtool`]) differ only in the
//! message inside.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_sys::Socket;
use std::io;

/// Send `msg` with `flags` (`NLM_F_REQUEST` added) as the next sequence number after
/// `*seq`, and collect the replies to it: a dump's parts until `NLMSG_DONE`, an
/// acknowledged request's replies until the ACK, or the one reply to a request that asks
/// for neither. An `NLMSG_ERROR` with a code is the [`io::Error`] of that errno.
pub(crate) fn transact<I>(sock: &Socket, seq: &mut u32, msg: I, flags: u16) -> io::Result<Vec<I>>
where
    I: NetlinkSerializable + NetlinkDeserializable,
{
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    *seq = seq.wrapping_add(1);
    header.sequence_number = *seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let msg = NetlinkMessage::<I>::deserialize(&data[off..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == *seq {
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) => return Ok(out), // ACK
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            off += len.next_multiple_of(4);
        }
    }
}
