package qtool.tokenize;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Token → output bytes, the per-token part of HF's decoders: ByteLevel (the byte alphabet back to bytes), or
 * Replace (▁ → space) with ByteFallback ({@code <0x0A>} → one byte). {@code stripLeadingSpaces}: how many spaces
 * the decoded text loses at its start (HF's Strip decoder, or Metaspace's prepend scheme) — the dummy prefix.
 */
record TokenDecoder(boolean byteLevel, List<String[]> replacements, boolean byteFallback, int stripLeadingSpaces) {

    static final TokenDecoder PLAIN = new TokenDecoder(false, List.of(), false, 0);

    static TokenDecoder sentencePiece(boolean stripDummyPrefix) {
        return new TokenDecoder(false, List.<String[]>of(new String[] {"\u2581", " "}), true, stripDummyPrefix ? 1 : 0);
    }

    static TokenDecoder byteLevelDecoder() {
        return new TokenDecoder(true, List.of(), false, 0);
    }

    byte[] bytes(String piece) {
        if (byteLevel) return ByteLevel.decode(piece);
        if (byteFallback) {
            int b = ScoreBpe.parseByteToken(piece);
            if (b >= 0) return new byte[] {(byte) b};
        }
        for (String[] r : replacements) piece = piece.replace(r[0], r[1]);
        return piece.getBytes(StandardCharsets.UTF_8);
    }
}
