//! Host-side bindings for the `guild:tool` world, generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "guild-tool",
    imports: { default: trappable },
    exports: { default: async },
    with: { "guild:tool/gpu.buffer": crate::gpu_buffer::GpuBuffer },
});
