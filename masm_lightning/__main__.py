from masm_lightning.cli import console_main

console_main()
