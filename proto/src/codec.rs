//! The codec of every Berth service: prost's, except that a message that
//! does not decode is INVALID_ARGUMENT, naming the message it should have
//! been, where tonic-prost says INTERNAL (gRPC's status table lists parse
//! errors under INTERNAL). A malformed request is the caller's mistake, and
//! INTERNAL would send whoever runs the cluster looking for a bug in it.
//! Generated clients share the codec: a response that does not decode
//! (only a server of an incompatible version sends one) reads the same.

use prost::Message;
use tonic::codec::BufferSettings;
use tonic::codec::Codec;
use tonic::codec::DecodeBuf;
use tonic::codec::Decoder;
use tonic::Status;
use tonic_prost::ProstCodec;
use tonic_prost::ProstDecoder;
use tonic_prost::ProstEncoder;

pub struct BerthCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BerthCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for BerthCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BerthDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BerthDecoder(self.0.decoder())
    }
}

pub struct BerthDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for BerthDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            let message = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("?");
            Status::invalid_argument(format!(
                "the message is not a valid {message}: {}",
                s.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
