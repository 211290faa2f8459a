package qtool.format.torch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import qtool.QtoolException;
import qtool.backend.Tensor;
import qtool.load.DType;

/** Files written by PyTorch 2.11's torch.save (make_misc.py): what the hand-made fixtures imitate. */
class RealTorchFilesTest {
    static final Path MISC = Path.of("java/test/resources/torch/misc");

    @Test
    void moduleStateDictWithMetadata() {
        try (Arena arena = Arena.ofConfined()) {
            Map<String, Tensor> t = TorchZipFile.open(MISC.resolve("quantlinear.pt"), arena).tensors();
            assertEquals(List.of("proj.qweight", "proj.qzeros", "proj.scales", "proj.g_idx", "proj.bias"), List.copyOf(t.keySet()));
            Tensor q = t.get("proj.qweight");
            assertEquals(DType.I32, q.dtype());
            assertArrayEquals(new long[] {3, 8}, q.shape());
            for (int i = 0; i < 24; i++) assertEquals(i, q.data().getAtIndex(Tensor.I32, i));
            assertEquals(0x77777777, t.get("proj.qzeros").data().getAtIndex(Tensor.I32, 0));
            float[] s = t.get("proj.scales").toFloatArray();
            for (int i = 0; i < 8; i++) assertEquals(i / 8f, s[i]);
        }
    }

    @Test
    void viewsSharingAStorageScalarsAndDtypes() {
        try (Arena arena = Arena.ofConfined()) {
            Map<String, Tensor> t = TorchZipFile.open(MISC.resolve("views.pt"), arena).tensors();
            assertArrayEquals(new float[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, t.get("base").toFloatArray());
            assertArrayEquals(new float[] {4, 5, 6, 7, 8, 9}, t.get("tail").toFloatArray());
            assertEquals(t.get("base").address() + 16, t.get("tail").address()); // same storage, offset 4
            for (int i = 0; i < 3; i++) assertEquals((long) i << 40, t.get("long").data().getAtIndex(ValueLayout.JAVA_LONG_UNALIGNED, i));
            assertArrayEquals(new float[] {0, 1, 2, 3}, t.get("bf").toFloatArray());
            assertEquals(DType.BF16, t.get("bf").dtype());
            assertArrayEquals(new long[] {}, t.get("scalar").shape());
            assertEquals(2.5f, t.get("scalar").getFloat(0));
        }
    }

    @Test
    void refusals() {
        try (Arena arena = Arena.ofConfined()) {
            QtoolException t = assertThrows(QtoolException.class, () -> TorchZipFile.open(MISC.resolve("transposed.pt"), arena).tensors());
            assertTrue(t.getMessage().contains("not contiguous"), t.getMessage());
            QtoolException l = assertThrows(QtoolException.class, () -> TorchZipFile.open(MISC.resolve("legacy.pt"), arena));
            assertTrue(l.getMessage().contains("legacy"), l.getMessage());
            QtoolException e = assertThrows(QtoolException.class, () -> TorchZipFile.open(MISC.resolve("evil.pt"), arena).tensors());
            assertTrue(e.getMessage().contains("refuses global posix.system") || e.getMessage().contains("refuses global os.system"), e.getMessage());
            assertFalse(Files.exists(Path.of("/tmp/qtool-pwned")));
        }
    }
}
