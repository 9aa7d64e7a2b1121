//! Compressed bodies (`Content-Encoding: gzip`, `zstd`, `lz4`), streaming through
//! async-compression. Each codec is behind the cargo feature of its name.

/// How hard an encoder compresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// The fastest the codec offers.
    Fastest,
    /// The codec's default.
    #[default]
    Default,
    /// The smallest output the codec offers.
    Best,
    /// A level on the codec's own scale.
    Precise(i32),
}

#[cfg(any(feature = "gzip", feature = "zstd", feature = "lz4"))]
impl From<Level> for async_compression::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Fastest => async_compression::Level::Fastest,
            Level::Default => async_compression::Level::Default,
            Level::Best => async_compression::Level::Best,
            Level::Precise(n) => async_compression::Level::Precise(n),
        }
    }
}

/// One module per compression codec: the codec, its topic half and its receiver half.
macro_rules! compression {
    (
        $(#[$doc:meta])*
        feature: $feature:literal,
        module: $module:ident,
        codec: $Codec:ident,
        name: $name:literal,
        encoder: $Encoder:ident,
        decoder: $Decoder:ident,
    ) => {
        $(#[$doc])*
        #[cfg(feature = $feature)]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        pub mod $module {
            use async_compression::futures::bufread::$Decoder;
            use async_compression::futures::write::$Encoder;
            use futures::io::BufReader;

            use super::Level;
            use crate::decorators::codec::{Codec, DecodeReceiver, EncodeTopic};
            use crate::{Body, MessageWriter};

            #[doc = concat!("The ", $name, " codec.")]
            #[derive(Debug, Clone, Copy, Default)]
            pub struct $Codec {
                level: Level,
            }

            impl $Codec {
                #[doc = concat!("The ", $name, " codec at the default level.")]
                pub fn new() -> Self {
                    $Codec::default()
                }

                #[doc = concat!("The ", $name, " codec compressing at `level`.")]
                pub fn with_level(level: Level) -> Self {
                    $Codec { level }
                }
            }

            #[doc = concat!("Compresses with ", $name, " what is published to `inner`.")]
            pub fn topic<T>(inner: T) -> EncodeTopic<T, $Codec> {
                EncodeTopic::new(inner, $Codec::default())
            }

            #[doc = concat!("Decompresses ", $name, " bodies before `inner` reads them.")]
            pub fn receiver<R>(inner: R) -> DecodeReceiver<R, $Codec> {
                DecodeReceiver::new(inner, $Codec::default())
            }

            impl Codec for $Codec {
                type Encoder<W: MessageWriter> = $Encoder<W>;
                const ATTRIBUTE: &'static str = "Content-Encoding";
                const NAME: &'static str = $name;

                fn encoder<W: MessageWriter>(&self, inner: W) -> $Encoder<W> {
                    $Encoder::with_quality(inner, self.level.into())
                }

                fn inner<W: MessageWriter>(encoder: &$Encoder<W>) -> &W {
                    encoder.get_ref()
                }

                fn inner_mut<W: MessageWriter>(encoder: &mut $Encoder<W>) -> &mut W {
                    encoder.get_mut()
                }

                fn decoder(&self, body: Body) -> Body {
                    let mut decoder = $Decoder::new(BufReader::new(body));
                    // Concatenated members or frames are one body, as the CLI tools and
                    // Go's readers take them.
                    decoder.multiple_members(true);
                    Body::from_reader(decoder)
                }
            }
        }
    };
}

compression! {
    /// gzip bodies (`Content-Encoding: gzip`, RFC 1952), as go-msg's gzip decorator.
    ///
    /// ```
    /// use msgio::decorators::gzip;
    /// # fn main() -> Result<(), msgio::Error> {
    /// let (inner, _server) = msgio::mem::channel(16)?;
    /// let topic = gzip::topic(inner);
    /// # let _ = topic;
    /// # Ok(()) }
    /// ```
    feature: "gzip",
    module: gzip,
    codec: Gzip,
    name: "gzip",
    encoder: GzipEncoder,
    decoder: GzipDecoder,
}

compression! {
    /// zstd bodies (`Content-Encoding: zstd`, RFC 8878 frames).
    ///
    /// ```
    /// use msgio::decorators::zstd;
    /// # fn main() -> Result<(), msgio::Error> {
    /// let (inner, _server) = msgio::mem::channel(16)?;
    /// let topic = zstd::topic(inner);
    /// # let _ = topic;
    /// # Ok(()) }
    /// ```
    feature: "zstd",
    module: zstd,
    codec: Zstd,
    name: "zstd",
    encoder: ZstdEncoder,
    decoder: ZstdDecoder,
}

compression! {
    /// lz4 bodies (`Content-Encoding: lz4`) in the standard LZ4 frame format, as go-msg's
    /// lz4 decorator and the `lz4` command-line tool write them.
    ///
    /// ```
    /// use msgio::decorators::lz4;
    /// # fn main() -> Result<(), msgio::Error> {
    /// let (inner, _server) = msgio::mem::channel(16)?;
    /// let topic = lz4::topic(inner);
    /// # let _ = topic;
    /// # Ok(()) }
    /// ```
    feature: "lz4",
    module: lz4,
    codec: Lz4,
    name: "lz4",
    encoder: Lz4Encoder,
    decoder: Lz4Decoder,
}
