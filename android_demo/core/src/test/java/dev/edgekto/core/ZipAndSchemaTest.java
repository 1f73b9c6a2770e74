package dev.edgekto.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.zip.ZipEntry;
import java.util.zip.ZipOutputStream;
import org.junit.Test;

public class ZipAndSchemaTest {
    static byte[] zipOf(String... namesAndContents) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ZipOutputStream z = new ZipOutputStream(bytes)) {
            for (int i = 0; i < namesAndContents.length; i += 2) {
                z.putNextEntry(new ZipEntry(namesAndContents[i]));
                z.write(namesAndContents[i + 1].getBytes(StandardCharsets.UTF_8));
                z.closeEntry();
            }
        }
        return bytes.toByteArray();
    }

    @Test
    public void theSharedBundleSurvivesAZipRoundTripAndStillVerifies() throws Exception {
        File src = new File(CoreTest.FIXTURES, "bundle");
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ZipOutputStream z = new ZipOutputStream(bytes)) {
            for (File f : Files.walk(src.toPath()).map(p -> p.toFile()).filter(File::isFile).toArray(File[]::new)) {
                z.putNextEntry(new ZipEntry("mybundle/" + src.toPath().relativize(f.toPath()).toString().replace('\\', '/')));
                z.write(Files.readAllBytes(f.toPath()));
                z.closeEntry();
            }
        }
        File dest = new File(Files.createTempDirectory("zipok").toFile(), "bundle");
        // A folder of the user's beside the target, named like an old temporary folder: never touched.
        File users = new File(dest.getParentFile(), "bundle.partial");
        assertTrue(users.mkdirs());
        Files.write(new File(users, "keep.txt").toPath(), "mine".getBytes(StandardCharsets.UTF_8));
        BundleZip.extract(new ByteArrayInputStream(bytes.toByteArray()), dest);
        new BundleVerifier(dest).verifyAll();
        String[] left = dest.getParentFile().list();
        java.util.Arrays.sort(left);
        assertEquals("[bundle, bundle.partial]", java.util.Arrays.toString(left));
        assertEquals("mine", new String(Files.readAllBytes(new File(users, "keep.txt").toPath()), StandardCharsets.UTF_8));
    }

    @Test
    public void entriesThatEscapeTheFolderAreRefusedAndNothingIsLeft() throws Exception {
        for (String bad : new String[] {"../evil.txt", "/etc/evil", "a/../../evil", "C:/evil"}) {
            File parent = Files.createTempDirectory("zipbad").toFile();
            File dest = new File(parent, "bundle");
            try {
                BundleZip.extract(new ByteArrayInputStream(zipOf("manifest.json", "{}", bad, "x")), dest);
                fail("accepted " + bad);
            } catch (BundleVerifier.BundleException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("outside the bundle folder"));
            }
            assertFalse(dest.exists());
            assertEquals("left files behind for " + bad, 0, parent.listFiles().length);
            assertFalse(new File(parent.getParentFile(), "evil.txt").exists());
        }
    }

    @Test
    public void feedbackSchemaIsTheRuntimes() throws IOException {
        String fixture = new String(Files.readAllBytes(new File(CoreTest.FIXTURES, "feedback_schema.sql").toPath()), StandardCharsets.UTF_8);
        assertEquals(fixture, FeedbackSchema.script());
    }
}
