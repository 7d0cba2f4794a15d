// A destructive action asked for twice, in a modal alert dialog from react-aria-components:
// focus moves into the dialog and stays there, Escape or Cancel closes it, focus returns to the
// button that opened it, and the page behind is hidden from assistive technology while it is open.
// Kept out of ui.tsx so the library loads with the screens that use it, not with the first page.
import type { ReactNode } from "react";
import { Button, Dialog, DialogTrigger, Heading, Modal, ModalOverlay } from "react-aria-components";

type ConfirmProps = {
  /** The button on the page, e.g. "Delete Local API". */
  label: string;
  /** The dialog's title and accessible name, e.g. "Delete Local API?". */
  title: string;
  /** The dialog's confirming button, e.g. "Delete". */
  confirm: string;
  children?: ReactNode;
  onConfirm: () => void;
  isDisabled?: boolean;
};

export function ConfirmButton({ label, title, confirm, children, onConfirm, isDisabled }: ConfirmProps) {
  return (
    <DialogTrigger>
      <Button className="danger" isDisabled={isDisabled}>
        {label}
      </Button>
      <ModalOverlay className="modal-overlay" isDismissable>
        <Modal className="modal">
          <Dialog role="alertdialog" className="dialog">
            {({ close }) => (
              <>
                <Heading slot="title">{title}</Heading>
                {children}
                <div className="row dialog-actions">
                  <Button className="ghost" onPress={close} autoFocus>
                    Cancel
                  </Button>
                  <Button
                    className="danger"
                    onPress={() => {
                      close();
                      onConfirm();
                    }}
                  >
                    {confirm}
                  </Button>
                </div>
              </>
            )}
          </Dialog>
        </Modal>
      </ModalOverlay>
    </DialogTrigger>
  );
}
