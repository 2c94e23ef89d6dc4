from stdvsr.cli import main

main()
