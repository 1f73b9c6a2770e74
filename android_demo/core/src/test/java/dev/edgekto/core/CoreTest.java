package dev.edgekto.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.Test;

/** Reads the same fixtures as the Python runtime tests (tests/fixtures), so the formats cannot drift. */
public class CoreTest {
    static final File FIXTURES = new File(System.getProperty("fixtures", "../../tests/fixtures"));

    @SuppressWarnings("unchecked")
    @Test
    public void latencyStatsMatchTheSharedCases() throws IOException {
        Map<String, Object> doc = (Map<String, Object>) Json.parse(read(new File(FIXTURES, "latency_cases.json")));
        List<Object> cases = (List<Object>) doc.get("cases");
        assertTrue(cases.size() >= 5);
        for (Object o : cases) {
            Map<String, Object> c = (Map<String, Object>) o;
            List<Object> vs = (List<Object>) c.get("values_s");
            double[] xs = new double[vs.size()];
            for (int k = 0; k < xs.length; k++) xs[k] = ((Number) vs.get(k)).doubleValue();
            Map<String, Object> exp = (Map<String, Object>) c.get("expected");
            LatencyStats s = new LatencyStats(xs);
            String name = (String) c.get("name");
            near(name + " p50", num(exp, "p50"), s.p50);
            near(name + " p90", num(exp, "p90"), s.p90);
            near(name + " p99", num(exp, "p99"), s.p99);
            near(name + " mean", num(exp, "mean"), s.mean);
            near(name + " stddev", num(exp, "stddev"), s.stddev);
            near(name + " min", num(exp, "min"), s.min);
            near(name + " max", num(exp, "max"), s.max);
        }
    }

    @Test
    public void sharedBundleVerifiesAndEveryKindOfDamageIsRefused() throws Exception {
        File ok = new File(FIXTURES, "bundle");
        BundleVerifier v = new BundleVerifier(ok);
        assertEquals(4, v.entries.size());
        v.verifyAll();

        File flipped = copy(ok, "flipped");
        try (RandomAccessFile f = new RandomAccessFile(new File(flipped, "model-q4_k_m.gguf"), "rw")) {
            f.seek(10);
            int b = f.read();
            f.seek(10);
            f.write(b ^ 1);
        }
        refused(flipped, "sha256");

        File truncated = copy(ok, "truncated");
        try (RandomAccessFile f = new RandomAccessFile(new File(truncated, "onnx-int4/model.onnx"), "rw")) {
            f.setLength(3);
        }
        refused(truncated, "truncated");

        File missing = copy(ok, "missing");
        assertTrue(new File(missing, "golden.jsonl").delete());
        refused(missing, "missing");

        File schema = copy(ok, "schema");
        Path m = new File(schema, "manifest.json").toPath();
        Files.write(m, read(m.toFile()).replace("\"schema_version\": 1", "\"schema_version\": 99").getBytes(StandardCharsets.UTF_8));
        refused(schema, "schema_version");

        File escape = copy(ok, "escape");
        Path m2 = new File(escape, "manifest.json").toPath();
        Files.write(m2, read(m2.toFile()).replace("\"golden.jsonl\"", "\"../golden.jsonl\"").getBytes(StandardCharsets.UTF_8));
        refused(escape, "escapes");
    }

    @Test
    public void feedbackRowsRoundTripByteForByte() throws IOException {
        List<String> lines = Files.readAllLines(new File(FIXTURES, "feedback_rows.jsonl").toPath(), StandardCharsets.UTF_8);
        assertEquals(2, lines.size());
        for (String line : lines) assertEquals(line, FeedbackRecord.fromJsonLine(line).toJsonLine());
        FeedbackRecord second = FeedbackRecord.fromJsonLine(lines.get(1));
        assertFalse(second.good);
        assertEquals("system", second.messages.get(0)[0]);
        try {
            new FeedbackRecord("x", second.messages, "  \n", true, null, null);
            fail("a blank completion must be refused");
        } catch (IllegalArgumentException expected) {
            assertTrue(expected.getMessage().contains("blank"));
        }
    }

    @Test
    public void jsonReaderRejectsBadInputWithALine() {
        try {
            Json.parse("{\n\"a\": [1, 2,, 3]\n}");
            fail("bad JSON accepted");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("line 2"));
        }
        assertEquals("héllo \"😀\"", ((Map<?, ?>) Json.parse("{\"k\": \"h\\u00e9llo \\\"😀\\\"\"}")).get("k"));
    }

    private static double num(Map<String, Object> m, String k) {
        return ((Number) m.get(k)).doubleValue();
    }

    private static void near(String what, double want, double got) {
        assertEquals(what, want, got, 1e-9 * Math.max(1.0, Math.abs(want)));
    }

    private static void refused(File bundle, String reason) throws IOException {
        try {
            new BundleVerifier(bundle).verifyAll();
            fail(bundle + " should have been refused (" + reason + ")");
        } catch (BundleVerifier.BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().contains(reason));
        }
    }

    private static String read(File f) throws IOException {
        return new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    }

    private static File copy(File src, String name) throws IOException {
        Path dst = Files.createTempDirectory("bundle-" + name);
        try (Stream<Path> walk = Files.walk(src.toPath())) {
            for (Path p : (Iterable<Path>) walk::iterator) {
                Path t = dst.resolve(src.toPath().relativize(p).toString());
                if (Files.isDirectory(p)) Files.createDirectories(t);
                else Files.copy(p, t, StandardCopyOption.REPLACE_EXISTING);
            }
        }
        return dst.toFile();
    }
}
