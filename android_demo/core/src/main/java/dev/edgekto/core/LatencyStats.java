package dev.edgekto.core;

import java.util.Arrays;

/**
 * Latency statistics with the same definitions as {@code edge-runtime bench} (edge_kto_runtime/stats.py):
 * percentiles by linear interpolation between closest ranks (numpy's default, Hyndman and Fan type 7),
 * sample standard deviation (n - 1). Both sides are tested against tests/fixtures/latency_cases.json.
 */
public final class LatencyStats {
    public final int n;
    public final double min, max, mean, stddev, p50, p90, p99;

    public LatencyStats(double[] values) {
        if (values.length == 0) throw new IllegalArgumentException("no values");
        double[] s = values.clone();
        Arrays.sort(s);
        n = s.length;
        min = s[0];
        max = s[n - 1];
        double sum = 0;
        for (double v : s) sum += v;
        mean = sum / n;
        double ss = 0;
        for (double v : s) ss += (v - mean) * (v - mean);
        stddev = n > 1 ? Math.sqrt(ss / (n - 1)) : 0.0;
        p50 = percentileSorted(s, 50);
        p90 = percentileSorted(s, 90);
        p99 = percentileSorted(s, 99);
    }

    public static double percentile(double[] values, double q) {
        double[] s = values.clone();
        Arrays.sort(s);
        return percentileSorted(s, q);
    }

    static double percentileSorted(double[] s, double q) {
        double h = (s.length - 1) * q / 100.0;
        int lo = (int) Math.floor(h);
        int hi = Math.min(lo + 1, s.length - 1);
        return s[lo] + (h - lo) * (s[hi] - s[lo]);
    }
}
