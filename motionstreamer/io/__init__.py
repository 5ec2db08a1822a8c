"""Motion output: BVH files (bvh), skeleton videos (render), motion .npy files (motion_io), and the
`render` / `to-bvh` CLI verbs (commands). Modules import their heavy dependencies lazily."""
