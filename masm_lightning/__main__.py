from masm_lightning.cli import main

main()
