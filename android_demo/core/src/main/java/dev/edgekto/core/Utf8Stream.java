package dev.edgekto.core;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * Turns the byte pieces of streamed tokens into text without ever showing half a character.
 *
 * <p>A token's piece can end inside a multi-byte UTF-8 sequence (emoji and many CJK characters
 * span two or three byte-level BPE tokens); decoding each piece alone would print U+FFFD. The
 * incomplete tail is held back until the next piece completes it, as the Python runtime does.
 */
public final class Utf8Stream {
    private final ByteArrayOutputStream pending = new ByteArrayOutputStream();

    /** Append a piece; return the text that is now complete (possibly empty). */
    public String push(byte[] piece) {
        pending.write(piece, 0, piece.length);
        byte[] buf = pending.toByteArray();
        int cut = completePrefix(buf);
        pending.reset();
        pending.write(buf, cut, buf.length - cut);
        return new String(buf, 0, cut, StandardCharsets.UTF_8);
    }

    /** Whatever is left at the end of the stream (invalid bytes become U+FFFD). */
    public String flush() {
        String rest = new String(pending.toByteArray(), StandardCharsets.UTF_8);
        pending.reset();
        return rest;
    }

    /** Length of the longest prefix that does not end inside a UTF-8 sequence. */
    static int completePrefix(byte[] b) {
        int n = b.length;
        for (int back = 1; back <= Math.min(3, n); back++) {
            int c = b[n - back] & 0xFF;
            if ((c & 0xC0) == 0x80) continue; // continuation byte: keep looking for the lead byte
            int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            return need > back ? n - back : n;
        }
        return n;
    }
}
