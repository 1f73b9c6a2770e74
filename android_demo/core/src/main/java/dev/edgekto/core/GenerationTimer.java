package dev.edgekto.core;

/**
 * TTFT and decode speed of one streamed answer, with the definitions {@code edge-runtime bench}
 * uses: TTFT = request start to the first generated token; decode tokens/s = (tokens - 1) divided
 * by the time from the first to the last token.
 */
public final class GenerationTimer {
    private final long start;
    private long first = -1, last = -1;
    private int tokens;

    public GenerationTimer(long startNanos) {
        this.start = startNanos;
    }

    public void onToken(long nowNanos) {
        if (tokens == 0) first = nowNanos;
        last = nowNanos;
        tokens++;
    }

    public int tokens() {
        return tokens;
    }

    /** Milliseconds to the first token, or NaN before it arrives. */
    public double ttftMs() {
        return tokens == 0 ? Double.NaN : (first - start) / 1e6;
    }

    /** Decode tokens per second after the first token, or NaN with fewer than two tokens. */
    public double decodeTokensPerSecond() {
        return tokens < 2 || last == first ? Double.NaN : (tokens - 1) / ((last - first) / 1e9);
    }

    /** The overlay line: "TTFT 83 ms · 41.2 tok/s · 64 tokens". */
    public String overlay() {
        return String.format(java.util.Locale.ROOT, "TTFT %.0f ms · %.1f tok/s · %d tokens", ttftMs(), decodeTokensPerSecond(), tokens);
    }
}
