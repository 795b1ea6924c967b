"""The ``hairclip`` method: HairCLIP (wty-ustc/HairCLIP) with reference images."""
