//! Generic netlink for the families xlane asks (ethtool, netdev): a socket with the
//! family resolved by name, messages of raw attributes, replies collected until the ACK.

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLM_F_ACK, NetlinkDeserializable, NetlinkSerializable, Nla,
    ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;

/// An attribute as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    U32(u16, u32),
    Str(u16, String),
    Flag(u16),
    Nested(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Self::U32(..) => 4,
            Self::Str(_, s) => s.len() + 1,
            Self::Flag(_) => 0,
            Self::Nested(_, attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::U32(k, _) | Self::Str(k, _) | Self::Flag(k) => *k,
            Self::Nested(k, _) => *k | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::U32(_, v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            Self::Str(_, s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            Self::Flag(_) => {}
            Self::Nested(_, attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// A generic netlink family, by name.
pub(crate) trait Family: Debug + Clone + PartialEq + Eq {
    const NAME: &'static str;
}

/// A message of family `F`: attributes to send, or the raw attributes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message<F> {
    pub(crate) cmd: u8,
    pub(crate) attrs: Vec<Attr>,
    pub(crate) received: Vec<u8>,
    family: PhantomData<F>,
}

impl<F> Message<F> {
    /// A request `cmd` with `attrs`.
    pub(crate) fn new(cmd: u8, attrs: Vec<Attr>) -> Self {
        Self { cmd, attrs, received: Vec::new(), family: PhantomData }
    }
}

impl<F: Family> GenlFamily for Message<F> {
    fn family_name() -> &'static str {
        F::NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl<F> Emitable for Message<F> {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer);
    }
}

impl<F> ParseableParametrized<[u8], GenlHeader> for Message<F> {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self { cmd: header.cmd, attrs: Vec::new(), received: buf.to_vec(), family: PhantomData })
    }
}

/// A generic netlink socket with one family resolved.
pub(crate) struct Genl<F> {
    sock: Socket,
    seq: u32,
    id: u16,
    family: PhantomData<F>,
}

impl<F: Family> Genl<F> {
    /// A socket in the calling thread's network namespace, `F` resolved.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let (mut seq, name) = (0, F::NAME);
        let get = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(name.into())] };
        let replies = crate::transport::transact(&sock, &mut seq, GenlMessage::from_payload(get), NLM_F_ACK)?;
        let id = replies
            .iter()
            .flat_map(|m: &GenlMessage<GenlCtrl>| &m.payload.nlas)
            .find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(*id) } else { None })
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, format!("no {name} netlink family")))?;
        Ok(Self { sock, seq, id, family: PhantomData })
    }

    /// Send one request and collect its replies until the ACK (or the error).
    pub(crate) fn request(&mut self, msg: Message<F>, flags: u16) -> io::Result<Vec<Message<F>>>
    where
        GenlMessage<Message<F>>: NetlinkSerializable + NetlinkDeserializable,
    {
        let mut m = GenlMessage::from_payload(msg);
        m.set_resolved_family_id(self.id);
        let replies = crate::transport::transact(&self.sock, &mut self.seq, m, NLM_F_ACK | flags)?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }
}
