package dev.edgekto.llama;

import dev.edgekto.core.LatencyStats;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;

/**
 * Fixed-length latency runs on the phone, with {@code edge-runtime bench}'s definitions, so the
 * app's numbers and the runtime's (run in Termux on the same phone) compare directly: each run
 * starts from an empty KV cache, feeds {@code nPrompt} tokens of plausible text, and decodes
 * exactly {@code nGen} greedy tokens with end-of-sequence ignored. TTFT = start to the first token;
 * TPOT = (last - first) / (nGen - 1); E2E = start to the last token.
 */
public final class LatencyBench {
    private static final String[] WORDS =
            "the device app light hub sensor battery menu reset network update schedule door lamp code".split(" ");

    private LatencyBench() {}

    /** Exactly n token ids of plausible text: random words from the runtime bench's list, tokenized, cut. */
    public static int[] syntheticPrompt(LlamaEngine e, int n, Random rnd) {
        List<Integer> ids = new ArrayList<>();
        while (ids.size() < n) {
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 64; i++) sb.append(i == 0 ? "" : " ").append(WORDS[rnd.nextInt(WORDS.length)]);
            for (int t : e.tokenize(sb.toString(), false, true)) ids.add(t);
        }
        int[] out = new int[n];
        for (int i = 0; i < n; i++) out[i] = ids.get(i);
        return out;
    }

    /** One run: {ttft_s, e2e_s, tpot_s}. */
    public static double[] once(LlamaEngine e, int[] prompt, int nGen) {
        e.reset();
        long t0 = System.nanoTime();
        long[] first = {-1}, last = {-1};
        int[] n = {0};
        e.generateFixed(prompt, nGen, (id, piece) -> {
            long now = System.nanoTime();
            if (n[0]++ == 0) first[0] = now;
            last[0] = now;
            return true;
        });
        long end = System.nanoTime();
        double tpot = n[0] > 1 ? (last[0] - first[0]) / 1e9 / (n[0] - 1) : Double.NaN;
        return new double[] {(first[0] - t0) / 1e9, (end - t0) / 1e9, tpot};
    }

    /** Warm-up runs are discarded; returns per-metric statistics in seconds, keyed like bench.json. */
    public static Map<String, LatencyStats> run(LlamaEngine e, int warmup, int runs, int nPrompt, int nGen, long seed) {
        Random rnd = new Random(seed);
        double[] ttft = new double[runs], e2e = new double[runs], tpot = new double[runs];
        for (int i = 0; i < warmup + runs; i++) {
            double[] r = once(e, syntheticPrompt(e, nPrompt, rnd), nGen);
            if (i < warmup) continue;
            ttft[i - warmup] = r[0];
            e2e[i - warmup] = r[1];
            tpot[i - warmup] = r[2];
        }
        Map<String, LatencyStats> out = new LinkedHashMap<>();
        out.put("ttft_s", new LatencyStats(ttft));
        out.put("tpot_s", new LatencyStats(tpot));
        out.put("e2e_s", new LatencyStats(e2e));
        return out;
    }

    /** The table the app shows and the host bench prints (milliseconds). */
    public static String table(Map<String, LatencyStats> stats) {
        StringBuilder sb = new StringBuilder("metric   p50      p90      p99      mean     (ms)\n");
        for (Map.Entry<String, LatencyStats> m : stats.entrySet()) {
            LatencyStats s = m.getValue();
            sb.append(String.format(Locale.ROOT, "%-8s %-8.1f %-8.1f %-8.1f %-8.1f\n", m.getKey().replace("_s", ""),
                    1e3 * s.p50, 1e3 * s.p90, 1e3 * s.p99, 1e3 * s.mean));
        }
        return sb.toString();
    }
}
