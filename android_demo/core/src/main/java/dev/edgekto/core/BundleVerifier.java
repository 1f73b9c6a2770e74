package dev.edgekto.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * Reads an edge-kto bundle's manifest.json and verifies every listed file (size, then streamed sha256)
 * with the rules of edge_kto_runtime/bundle.py: the app refuses a bundle that fails any of them, with a
 * message a person can act on.
 */
public final class BundleVerifier {
    public static final String FORMAT = "edge-kto-bundle";
    public static final long SCHEMA_VERSION = 1;

    public static final class BundleException extends Exception {
        private static final long serialVersionUID = 1L;

        public BundleException(String message) {
            super(message);
        }
    }

    /** One file to check: its path inside the bundle, its size and sha256. */
    public static final class Entry {
        public final String path;
        public final long bytes;
        public final String sha256;

        Entry(String path, long bytes, String sha256) {
            this.path = path;
            this.bytes = bytes;
            this.sha256 = sha256;
        }
    }

    public final File root;
    public final Map<String, Object> manifest;
    public final List<Entry> entries = new ArrayList<>();

    @SuppressWarnings("unchecked")
    public BundleVerifier(File root) throws BundleException {
        this.root = root;
        File mf = new File(root, "manifest.json");
        if (!mf.isFile()) throw new BundleException(root + ": not a bundle (no manifest.json)");
        Object parsed;
        try {
            parsed = Json.parse(new String(Files.readAllBytes(mf.toPath()), StandardCharsets.UTF_8));
        } catch (IOException | IllegalArgumentException e) {
            throw new BundleException(mf + ": " + e.getMessage());
        }
        if (!(parsed instanceof Map)) throw new BundleException(mf + ": expected a JSON object");
        manifest = (Map<String, Object>) parsed;
        if (!FORMAT.equals(manifest.get("format")))
            throw new BundleException(mf + ": field 'format': expected " + FORMAT + ", got " + manifest.get("format"));
        Object version = manifest.get("schema_version");
        if (!(version instanceof Long) || (Long) version != SCHEMA_VERSION)
            throw new BundleException(mf + ": field 'schema_version': this app reads version " + SCHEMA_VERSION
                    + ", the bundle has " + version + "; update the app or re-export the bundle");
        Object arts = manifest.get("artifacts");
        if (!(arts instanceof List) || ((List<Object>) arts).isEmpty())
            throw new BundleException(mf + ": field 'artifacts': expected a non-empty list");
        int k = 0;
        for (Object o : (List<Object>) arts) {
            String f = "artifacts[" + k++ + "]";
            if (!(o instanceof Map)) throw new BundleException(mf + ": field '" + f + "': expected an object");
            Map<String, Object> a = (Map<String, Object>) o;
            String path = str(a.get("path"), mf, f + ".path");
            if (a.containsKey("files")) {
                if (!(a.get("files") instanceof Map)) throw new BundleException(mf + ": field '" + f + ".files': expected an object");
                String dir = path.endsWith("/") ? path : path + "/";
                for (Map.Entry<String, Object> e : ((Map<String, Object>) a.get("files")).entrySet())
                    entries.add(entry(dir + e.getKey(), e.getValue(), mf, f + ".files[" + e.getKey() + "]"));
            } else {
                entries.add(entry(path, a, mf, f));
            }
        }
        if (manifest.get("golden") instanceof Map) {
            Map<String, Object> g = (Map<String, Object>) manifest.get("golden");
            entries.add(entry(str(g.get("path"), mf, "golden.path"), g, mf, "golden"));
        }
    }

    private static String str(Object v, File mf, String field) throws BundleException {
        if (!(v instanceof String) || ((String) v).isEmpty()) throw new BundleException(mf + ": field '" + field + "': missing");
        String p = (String) v;
        if (p.startsWith("/") || p.contains("\\") || ("/" + p + "/").contains("/../"))
            throw new BundleException(mf + ": field '" + field + "': path " + p + " escapes the bundle folder");
        return p;
    }

    @SuppressWarnings("unchecked")
    private static Entry entry(String path, Object o, File mf, String field) throws BundleException {
        str(path, mf, field + ".path");
        if (!(o instanceof Map)) throw new BundleException(mf + ": field '" + field + "': expected an object");
        Map<String, Object> m = (Map<String, Object>) o;
        Object bytes = m.get("bytes"), sha = m.get("sha256");
        if (!(bytes instanceof Long) || !(sha instanceof String) || ((String) sha).length() != 64)
            throw new BundleException(mf + ": field '" + field + "': needs 'bytes' (int) and 'sha256' (64 hex digits)");
        return new Entry(path, (Long) bytes, (String) sha);
    }

    /** Checks every file; throws on the first that is missing, has the wrong size, or the wrong sha256. */
    public void verifyAll() throws BundleException, IOException {
        for (Entry e : entries) verify(e);
    }

    public void verify(Entry e) throws BundleException, IOException {
        File f = new File(root, e.path);
        if (!f.isFile()) throw new BundleException(f + ": listed in the manifest but missing");
        if (f.length() != e.bytes)
            throw new BundleException(f + ": " + f.length() + " bytes, the manifest says " + e.bytes + " (truncated or replaced)");
        String got = sha256(f);
        if (!got.equals(e.sha256))
            throw new BundleException(f + ": sha256 " + got + " does not match the manifest (" + e.sha256 + "); the file was modified");
    }

    public static String sha256(File f) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException ex) {
            throw new IllegalStateException(ex);
        }
        byte[] buf = new byte[1 << 20];
        try (InputStream in = new FileInputStream(f)) {
            int n;
            while ((n = in.read(buf)) > 0) md.update(buf, 0, n);
        }
        StringBuilder b = new StringBuilder();
        for (byte x : md.digest()) b.append(String.format("%02x", x));
        return b.toString();
    }
}
