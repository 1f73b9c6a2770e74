package dev.edgekto.core;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;

/**
 * Unpacks a bundle zip (from {@code edge-kto export --zip}) that the user picked on the phone.
 *
 * <p>Nothing is written outside the target folder: absolute names, {@code ..} segments and names
 * that resolve elsewhere are refused (the zip-slip attack), as the Python runtime's safe_extract
 * does. The bundle lands in a temporary sibling folder and is renamed into place only when the
 * whole archive has been read, so a failed import leaves no half bundle behind.
 */
public final class BundleZip {
    private BundleZip() {}

    public static File extract(InputStream zip, File dest) throws IOException, BundleVerifier.BundleException {
        if (dest.exists()) throw new BundleVerifier.BundleException(dest + ": already exists; remove the old bundle first");
        File parent = dest.getAbsoluteFile().getParentFile();
        if (!parent.isDirectory() && !parent.mkdirs()) throw new IOException("cannot create " + parent);
        // A unique new folder: an import never removes anything it did not create.
        File tmp = Files.createTempDirectory(parent.toPath(), "." + dest.getName() + ".partial-").toFile();
        String root = tmp.getCanonicalPath() + File.separator;
        boolean ok = false;
        try (ZipInputStream in = new ZipInputStream(zip)) {
            byte[] buf = new byte[1 << 16];
            for (ZipEntry e; (e = in.getNextEntry()) != null; ) {
                String name = e.getName().replace('\\', '/');
                if (name.startsWith("/") || name.matches("^[A-Za-z]:.*") || ("/" + name + "/").contains("/../"))
                    throw new BundleVerifier.BundleException("zip entry '" + e.getName() + "' points outside the bundle folder; refusing the archive");
                File out = new File(tmp, name);
                if (!(out.getCanonicalPath() + (e.isDirectory() ? File.separator : "")).startsWith(root))
                    throw new BundleVerifier.BundleException("zip entry '" + e.getName() + "' resolves outside the bundle folder; refusing the archive");
                if (e.isDirectory()) {
                    out.mkdirs();
                    continue;
                }
                out.getParentFile().mkdirs();
                try (OutputStream os = new FileOutputStream(out)) {
                    for (int n; (n = in.read(buf)) > 0; ) os.write(buf, 0, n);
                }
            }
            File inner = singleTopFolder(tmp);
            if (!inner.renameTo(dest)) throw new IOException("cannot move " + inner + " to " + dest);
            ok = true;
            return dest;
        } finally {
            if (!ok || tmp.exists()) deleteTree(tmp);
        }
    }

    /** Zips made by `edge-kto export --zip` may hold the bundle at the top or inside one folder. */
    private static File singleTopFolder(File dir) {
        File[] kids = dir.listFiles();
        if (kids != null && kids.length == 1 && kids[0].isDirectory() && !new File(dir, "manifest.json").exists()) return kids[0];
        return dir;
    }

    static void deleteTree(File f) {
        File[] kids = f.listFiles();
        if (kids != null) for (File k : kids) deleteTree(k);
        f.delete();
    }
}
